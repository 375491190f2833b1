"""Export a prompt-tuned keras-hub `CausalLM` that serves generated text.

The same layout, prompt table and safety as `exporter.export_model`, for
causal LMs with prompt tuning from `tf_softprompt.hub`:

- `serving_default(text: string[B] [, task: string[B]])` -> `text`
  string `[B]`: the input text followed by its continuation (as
  `CausalLM.generate` returns it), decoded in-graph.
- `predict_tokens(token_ids: int32[B, T], padding_mask: int32[B, T]
  [, task_id: int32[B]])` -> `token_ids`, `padding_mask` int32 `[B, T]`:
  the generation loop on ids only (static T, no string ops), also saved
  under the function alias `tpu_func`.

T = `sequence_length - Pmax` positions hold the input text and the
generated tokens; the input text is truncated to fit (the prompt never is),
and generation stops at the end token or when the T positions are full.
Decoding uses the sampler passed to `export_causal_lm` (greedy by default,
so a served answer is reproducible); no function is XLA-compiled.

Example:
```python
lm = keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")
hub.enable_prompt_tuning(lm, 20)  # ... then train
export_causal_lm(lm, "models/writer", 1, sequence_length=64)
```
"""

import json
import os

import tensorflow as tf

from tf_softprompt.export import exporter, layout

OUTPUT_TEXT = "text"


class _GenerationStages:
    """Named stages: encode, select prompts, generate, decode."""

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

    def generate(self, token_ids, padding_mask, task_index):
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

    def decode(self, outputs):
        """Drop padding and special tokens, detokenise: string `[B]`."""
        token_ids = outputs["token_ids"]
        keep = tf.cast(outputs["padding_mask"], tf.bool)
        for name in ("start_token_id", "end_token_id", "pad_token_id"):
            special = getattr(self.tokenizer, name, None)
            if special is not None:
                keep &= token_ids != special
        return self.tokenizer.detokenize(tf.ragged.boolean_mask(token_ids, keep))


def _endpoints(stages, table):
    length = stages.length
    ids_spec = tf.TensorSpec([None, length], tf.int32, name="token_ids")
    mask_spec = tf.TensorSpec([None, length], tf.int32, name="padding_mask")
    text_spec = tf.TensorSpec([None], tf.string, name="text")

    def text_to_text(text, task_index):
        token_ids, padding_mask = stages.encode(text)
        outputs = stages.generate(token_ids, padding_mask, task_index)
        return {OUTPUT_TEXT: stages.decode(outputs)}

    def zeros(x):
        return tf.zeros(tf.shape(x)[:1], tf.int32)

    if len(table.tasks) > 1:

        def serving_default(text, task):
            return text_to_text(text, table.task_index(task))

        def predict_tokens(token_ids, padding_mask, task_id):
            mask = tf.cast(padding_mask, tf.bool)
            return stages.generate(token_ids, mask, table.check_task_id(task_id))

        task_spec = tf.TensorSpec([None], tf.string, name="task")
        id_spec = tf.TensorSpec([None], tf.int32, name="task_id")
        return {
            "serving_default": (serving_default, [text_spec, task_spec]),
            "predict_tokens": (predict_tokens, [ids_spec, mask_spec, id_spec]),
        }

    def serving_default(text):  # noqa: F811 - one pair per mode
        return text_to_text(text, zeros(text))

    def predict_tokens(token_ids, padding_mask):  # noqa: F811
        mask = tf.cast(padding_mask, tf.bool)
        return stages.generate(token_ids, mask, zeros(token_ids))

    return {
        "serving_default": (serving_default, [text_spec]),
        "predict_tokens": (predict_tokens, [ids_spec, mask_spec]),
    }


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
        sequence_length: int L, prompt + text + generated tokens.
        preprocessor: a `CausalLMPreprocessor`; default `model.preprocessor`.
        prompts: `None` (the model's own prompt as task `task`), or prompt
            artifacts (list of paths or `{task: path}`) for this base.
        task: the task name of the model's own prompt.
        offset: override the prompts' offset.
        sampler: a keras-hub sampler or its name, used while exporting.
        model_name: the name in warmup requests (default: the base dir name).
        warmup_texts: texts for the warmup requests.

    Returns:
        The path of the new version directory.
    """
    import keras_hub

    base_dir = os.fspath(base_dir)
    target = layout.check_new_version(base_dir, version)
    preprocessor = preprocessor or model.preprocessor
    if not isinstance(model, keras_hub.models.CausalLM) or preprocessor is None:
        raise ValueError(
            "export_causal_lm needs a keras-hub CausalLM and its "
            f"CausalLMPreprocessor. Received: model={type(model).__name__}, "
            f"preprocessor={type(preprocessor).__name__}."
        )
    handle, table, _ = exporter.hub_prompt_table(model, prompts, task, offset)
    if prompts is not None:
        handle = exporter.fit_prompt_tuning(model, handle, table)
    length = int(sequence_length) - table.max_length
    if length < 2:
        raise ValueError(
            f"sequence_length={sequence_length} leaves {length} positions after "
            f"the {table.max_length} prompt positions; at least 2 are needed "
            "(a start token and one generated token)."
        )
    stages = _GenerationStages(handle, table, preprocessor, length)
    warmup = exporter.warmup_inputs(stages, warmup_texts, table)
    previous = model.sampler
    model.sampler = keras_hub.samplers.get(sampler)
    try:
        archive = exporter._archive_class(model)()
        archive.track(model)
        archive.track(preprocessor)
        for name, (fn, signature) in _endpoints(stages, table).items():
            archive.add_endpoint(name, fn, input_signature=signature)
        alias = exporter._endpoint_function(archive, "predict_tokens")
        options = tf.saved_model.SaveOptions(
            function_aliases={exporter.TPU_ALIAS: alias}
        )
        with layout.publish_version(base_dir, version) as tmp:
            exporter._write_archive(archive, tmp, options)
            layout.write_warmup_requests(
                tmp, model_name or os.path.basename(os.path.abspath(base_dir)), warmup
            )
            with open(os.path.join(tmp, exporter.INFO_FILE), "w") as f:
                json.dump(_info(table, sequence_length, length), f, indent=2)
    finally:
        model.sampler = previous
    return target


def _info(table, sequence_length, length):
    return {
        "format": "tf-softprompt-export/1",
        "kind": "causal_lm",
        "tasks": list(table.tasks),
        "prompt_lengths": list(table.lengths),
        "max_prompt_length": table.max_length,
        "prompt_offset": table.offset,
        "prompt_method": table.method,
        "vocab_fingerprint": table.vocab_fingerprint,
        "sequence_length": int(sequence_length),
        "text_positions": length,
        "multi_task": len(table.tasks) > 1,
        "signatures": ["serving_default", "predict_tokens"],
        "function_aliases": {exporter.TPU_ALIAS: "predict_tokens"},
        "truncation": (
            "input text keeps its first text_positions - 1 tokens after the "
            "start token; generation fills the rest; the prompt is never "
            "truncated"
        ),
    }
