"""Export a prompt-tuned keras-hub `CausalLM` that serves generated text.

The same layout, prompt table, signatures and safety as the classifier
exporter (`classifier.export_model`, `archive`), for causal LMs with prompt
tuning from `tf_softprompt.hub` (every method):

- `serving_default(text: string[B] [, task: string[B]])` -> `text`
  string `[B]`: the input text followed by its continuation (as
  `CausalLM.generate` returns it), decoded in-graph.
- `predict_tokens(token_ids: int32[B, T], padding_mask: int32[B, T]
  [, task_id: int32[B]])` -> `token_ids`, `padding_mask` int32 `[B, T]`:
  the generation loop on ids only (static T, no string ops), also saved
  under the function alias `tpu_func`.

T holds the input text and the generated tokens: `sequence_length - Pmax`
positions for prompts that take positions (forms 1 and 2), all
`sequence_length` for a prefix. The input text is truncated to fit (the
prompt never is), and generation stops at the end token or when the T
positions are full. Decoding uses the sampler passed to `export_causal_lm`
(greedy by default, so a served answer is reproducible); no function is
XLA-compiled.

Example:
```python
lm = keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")
hub.enable_prompt_tuning(lm, 20)  # ... then train
export_causal_lm(lm, "models/writer", 1, sequence_length=64)
```
"""

import os

import tensorflow as tf

from tf_softprompt import hub
from tf_softprompt.export import archive, hub_models, layout

OUTPUT_TEXT = "text"


class GenerationStages:
    """Named stages: encode, select prompts, generate (`run`), decode."""

    def __init__(self, handle, table, preprocessor, length):
        self.handle = handle
        self.table = table
        self.preprocessor = preprocessor
        self.tokenizer = preprocessor.tokenizer
        self.length = length

    def encode(self, text):
        features = self.preprocessor.generate_preprocess(
            text, sequence_length=self.length
        )
        token_ids = tf.cast(features["token_ids"], tf.int32)
        return token_ids, tf.cast(features["padding_mask"], tf.bool)

    def run(self, token_ids, padding_mask, task_index):
        prompt_ids, prompt_mask = self.table.prompt_ids(task_index)
        outputs = self.handle.generate_step(
            {"token_ids": token_ids, "padding_mask": padding_mask},
            stop_token_ids=[self.tokenizer.end_token_id],
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
        )
        return {
            "token_ids": tf.cast(outputs["token_ids"], tf.int32),
            "padding_mask": tf.cast(outputs["padding_mask"], tf.int32),
        }

    def present(self, outputs, task_index):
        """Drop padding and special tokens, detokenise: string `[B]`."""
        token_ids = outputs["token_ids"]
        keep = tf.cast(outputs["padding_mask"], tf.bool)
        for name in ("start_token_id", "end_token_id", "pad_token_id"):
            special = getattr(self.tokenizer, name, None)
            if special is not None:
                keep &= token_ids != special
        text = self.tokenizer.detokenize(tf.ragged.boolean_mask(token_ids, keep))
        return {OUTPUT_TEXT: text}


def export_causal_lm(
    model,
    base_dir,
    version,
    *,
    sequence_length,
    preprocessor=None,
    prompts=None,
    task="default",
    offset=None,
    sampler="greedy",
    model_name=None,
    warmup_texts=("a warmup request", ""),
):
    """Export a keras-hub `CausalLM` with its prompt(s) to `BASE/<version>`.

    Args:
        model: a keras-hub `CausalLM`; prompt tuning enabled
            (`tf_softprompt.hub`), or `prompts` given (it is then enabled
            on `model` to fit them, which modifies `model`).
        base_dir: the model's TF Serving base path.
        version: positive int; `BASE/<version>` must not exist.
        sequence_length: int L, prompt slots + text + generated tokens.
        preprocessor: a `CausalLMPreprocessor`; default `model.preprocessor`.
        prompts: `None` (the model's own prompt as task `task`), or prompt
            artifacts (list of paths or `{task: path}`) for this base.
        task: the task name of the model's own prompt.
        offset: override the prompts' offset (forms 1 and 2).
        sampler: a keras-hub sampler or its name, used while exporting.
        model_name: the name in warmup requests (default: the base dir name).
        warmup_texts: texts for the warmup requests.

    Returns:
        The path of the new version directory.
    """
    import keras_hub

    base_dir = os.fspath(base_dir)
    layout.check_new_version(base_dir, version)
    preprocessor = preprocessor or getattr(model, "preprocessor", None)
    if not hub.is_causal_lm(model) or preprocessor is None:
        raise ValueError(
            "export_causal_lm needs a keras-hub CausalLM and its "
            f"CausalLMPreprocessor. Received: model={type(model).__name__}, "
            f"preprocessor={type(preprocessor).__name__}."
        )
    handle, table = hub_models.prompt_table(model, prompts, task, offset)
    if prompts is not None:
        handle = hub_models.fit(model, handle, table)
    reserved = table.max_length if table.takes_positions else 0
    length = int(sequence_length) - reserved
    if length < 2:
        raise ValueError(
            f"sequence_length={sequence_length} leaves {length} positions after "
            f"the {reserved} prompt positions; at least 2 are needed "
            "(a start token and one generated token)."
        )
    stages = GenerationStages(handle, table, preprocessor, length)
    warmup = archive.warmup_inputs(stages.encode, warmup_texts, table)
    signatures = archive.endpoints(stages, length, table)
    info = {
        "kind": "causal_lm",
        **archive.table_info(table),
        "sequence_length": int(sequence_length),
        "text_positions": length,
        "outputs": {
            "serving_default": [OUTPUT_TEXT],
            "predict_tokens": ["token_ids", "padding_mask"],
        },
        "truncation": (
            "input text keeps its first text_positions - 1 tokens after the "
            "start token; generation fills the rest; the prompt is never "
            "truncated"
        ),
    }
    previous = model.sampler
    model.sampler = keras_hub.samplers.get(sampler)
    try:
        return archive.write(
            [model, preprocessor],
            base_dir,
            version,
            signatures,
            warmup,
            info,
            model_name=model_name,
        )
    finally:
        model.sampler = previous
