"""Export a prompt-tuned keras-hub `CausalLM` that serves generated text.

The same layout, prompt table, signatures and safety as the classifier
exporter (`classifier.export_model`, `archive`), for causal LMs with prompt
tuning from `tf_softprompt.hub` (every method, prefix included):

- `serving_default(text: string[B] [, task: string[B]])` -> `text`
  string `[B]`: the input text followed by its continuation (as
  `CausalLM.generate` returns it), decoded in-graph.
- `predict_tokens(token_ids: int32[B, T], padding_mask: int32[B, T]
  [, task_id: int32[B]])` -> `token_ids`, `padding_mask` int32 `[B, T]`:
  the generation loop on ids only (static T, no string ops), also saved
  under the function alias `tpu_func`. Positions after the end of each
  row's generation (padding_mask 0) hold the pad id.
- `score_tokens(token_ids, padding_mask [, task_id])` -> `logits` float32
  `[B, T, V]`: the prompted model's next-token logits at every position
  (what `CausalLM.score` returns), numbers only.

T holds the input text and the generated tokens: `sequence_length - Pmax`
positions for prompts that take positions (forms 1 and 2), all
`sequence_length` for a prefix. The input text is truncated to fit (the
prompt never is), and generation stops at the end token or when the T
positions are full. Decoding uses the sampler passed to `export_causal_lm`
(greedy by default, so a served answer is reproducible); no function is
XLA-compiled.

Baked prompts (`bake=True`, the default): where the prompt's keys and
values are the same for every request (forms 1 and 2 at offset 0, and a
prefix; `export.baking`), they are computed at export and the served graph
runs the text alone, so prefill cost does not grow with the prompt except
in attention. The served outputs equal the unbaked export's. The export
info's `prompt_baking` says whether the prompts were baked and, if not, why.

Example:
```python
lm = keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")
hub.enable_prompt_tuning(lm, 20)  # ... then train
export_causal_lm(lm, "models/writer", 1, sequence_length=64)
```
"""

import contextlib
import os

import tensorflow as tf

from tf_softprompt import hub
from tf_softprompt.export import archive, baking, hub_models, layout
from tf_softprompt.training.completion_data import detokenize_generated

OUTPUT_TEXT = "text"
OUTPUT_LOGITS = "logits"
SCORE_SIGNATURE = "score_tokens"


class GenerationStages:
    """Named stages: encode, select prompts, generate (`run`), decode.

    Args:
        model: the CausalLM.
        handle: its `PromptTuning` handle, or `None` (no prompt).
        table: the `MultiTaskPromptTable`, or `None`.
        preprocessor: the `CausalLMPreprocessor`.
        length: int T, the text positions.
        plan: the `baking.BakePlan`; when baked, `keys_values` holds its
            table as a tracked weight.
        keys_values: a `baking.BakedKeysValues`, when baked.
    """

    def __init__(
        self, model, handle, table, preprocessor, length, plan=None, keys_values=None
    ):
        self.model = model
        self.handle = handle
        self.table = table
        self.preprocessor = preprocessor
        self.tokenizer = preprocessor.tokenizer
        self.length = length
        self.plan = plan
        self.keys_values = keys_values
        self.pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0

    def encode(self, text):
        features = self.preprocessor.generate_preprocess(
            text, sequence_length=self.length
        )
        token_ids = tf.cast(features["token_ids"], tf.int32)
        return token_ids, tf.cast(features["padding_mask"], tf.bool)

    def prompt_arguments(self, task_index):
        """The handle's keyword arguments for each example's prompt."""
        if self.table is None:
            return {}
        if archive.is_multi_task(self.table):
            prompt_ids, prompt_mask = self.table.prompt_ids(task_index)
        else:
            # One task: every example reads the whole table, no gather.
            prompt_ids = prompt_mask = None
        kwargs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}
        if self.plan is not None and self.plan.baked:
            offsets = tf.constant(self.plan.position_offsets, tf.int32)
            kwargs["keys_values"] = self.keys_values.values()
            kwargs["position_offsets"] = tf.gather(offsets, task_index)
        return kwargs

    def run(self, token_ids, padding_mask, task_index):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        stop = [self.tokenizer.end_token_id]
        if self.handle is None:
            outputs = self.model.generate_step(inputs, stop_token_ids=stop)
        else:
            outputs = self.handle.generate_step(
                inputs, stop_token_ids=stop, **self.prompt_arguments(task_index)
            )
        keep = tf.cast(outputs["padding_mask"], tf.bool)
        token_ids = tf.cast(outputs["token_ids"], tf.int32)
        return {
            # What follows a row's end token depends on how long the batch
            # ran; the pad id makes the output the row's alone.
            "token_ids": tf.where(keep, token_ids, self.pad_id),
            "padding_mask": tf.cast(keep, tf.int32),
        }

    def score(self, token_ids, padding_mask, task_index):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if self.handle is None:
            logits = self.model(inputs, training=False)
        else:
            logits = self.handle.call(
                inputs, training=False, **self.prompt_arguments(task_index)
            )
        return {OUTPUT_LOGITS: tf.cast(logits, tf.float32)}

    def present(self, outputs, task_index):
        """Drop padding and special tokens, detokenise: string `[B]`."""
        text = detokenize_generated(
            self.tokenizer, outputs["token_ids"], outputs["padding_mask"]
        )
        return {OUTPUT_TEXT: text}


class _ScoreStages:
    """`GenerationStages` with `score` as the model stage, so `archive.
    endpoints` builds `score_tokens` with the same inputs and task checks
    as `predict_tokens`."""

    def __init__(self, stages):
        self.encode = stages.encode
        self.run = stages.score
        self.present = stages.present


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
    bake=True,
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
        prompts: `None` (the model's own prompt as task `task`), prompt
            artifacts (list of paths or `{task: path}`) for this base, or an
            empty list to export the base model without any prompt (e.g. as
            a baseline; prompt tuning must then not be enabled).
        task: the task name of the model's own prompt.
        offset: override the prompts' offset (forms 1 and 2).
        sampler: a keras-hub sampler or its name, used while exporting.
        bake: bool, bake the prompts' keys and values where it applies
            (forms 1 and 2 at offset 0, prefix); False serves the prompt
            positions on every request. The info's `prompt_baking` says
            what was done and why.
        model_name: the name in warmup requests (default: the base dir name).
        warmup_texts: texts for the warmup requests.

    Returns:
        The path of the new version directory.

    Example:
    ```python
    export_causal_lm(lm, "models/writer", 1, sequence_length=64)
    export_causal_lm(lm, "models/writer", 2, sequence_length=64, bake=False)
    info = read_info("models/writer/1")["prompt_baking"]  # {"baked": True, ...}
    ```
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
    if prompts is not None and len(prompts) == 0:
        handle, table = _no_prompt(model)
    else:
        handle, table = hub_models.prompt_table(model, prompts, task, offset)
        if prompts is not None:
            handle = hub_models.fit(model, handle, table)
    slots = table.sequence_slots if table is not None else 0
    length = int(sequence_length) - slots
    if length < 2:
        raise ValueError(
            f"sequence_length={sequence_length} leaves {length} positions after "
            f"the {slots} prompt positions; at least 2 are needed "
            "(a start token and one generated token)."
        )
    plan, keys_values = None, None
    if table is not None:
        plan = baking.bake_plan(model, handle, table, bake=bake)
        baking.check_positions(handle, plan, length)
        if plan.baked:
            keys_values = baking.BakedKeysValues(plan.table.table)
    stages = GenerationStages(
        model, handle, table, preprocessor, length, plan, keys_values
    )
    info = {
        "kind": "causal_lm",
        **archive.table_info(table),
        "sequence_length": int(sequence_length),
        "text_positions": length,
        "outputs": {
            "serving_default": [OUTPUT_TEXT],
            "predict_tokens": ["token_ids", "padding_mask"],
            SCORE_SIGNATURE: [OUTPUT_LOGITS],
        },
        "prompt_baking": plan.info
        if plan is not None
        else {"baked": False, "reason": "no prompt"},
        "truncation": (
            "input text keeps its first text_positions - 1 tokens after the "
            "start token; generation fills the rest; the prompt is never "
            "truncated"
        ),
    }

    @contextlib.contextmanager
    def with_sampler():
        previous = model.sampler
        model.sampler = keras_hub.samplers.get(sampler)
        try:
            yield
        finally:
            model.sampler = previous

    servable = archive.Servable(
        stages=stages,
        text_length=length,
        table=table,
        tracked=[model, preprocessor]
        + ([keys_values] if keys_values is not None else []),
        info=info,
        extra={SCORE_SIGNATURE: _ScoreStages(stages)},
        warmup_texts=tuple(warmup_texts),
        around_write=with_sampler,
    )
    return archive.write(servable, base_dir, version, model_name=model_name)


def _no_prompt(model):
    if hub.get_prompt_tuning(model) is not None:
        raise ValueError(
            "prompts=[] exports the base model without a prompt, but this model "
            "has prompt tuning enabled. Export a model without prompt tuning, "
            "or pass prompts=None to export its prompt."
        )
    return None, None
