"""The causal-LM task: a prompt for a keras-hub `CausalLM` (GPT-2, Llama,
Gemma), trained on prompt/completion pairs with the loss on the completion
only, or on plain texts (`tf-softprompt train --task causal-lm`).

Each row is tokenised as `generate` will see it: the prompt as the
preprocessor's `generate_preprocess` packs it (its start token, if any,
then the prompt's tokens), followed by the completion's tokens and the end
token. The model reads all tokens but the last; position t predicts token
t + 1, and the loss counts position t only where token t + 1 belongs to
the completion (the end token included). Prompt tokens, padding and the
prompt's virtual positions (which the prompt-tuned model never returns:
its outputs are in the caller's layout) are neither in the loss nor in its
denominator.

The loss of a step is the mean cross-entropy over the completion tokens of
the whole global batch: each example's token weights are scaled by
`global_batch_size / completion tokens of its global batch` when the
epoch's batches are cut (`scaled_weights`), so the `Trainer`'s sum over
replicas divided by the global batch size is exactly that mean, whatever
the replicas.

Held-out figures: `completion_loss` (nats per completion token),
`perplexity` (its exponential) and `exact_match` (greedy generation from
the prompt, stopped at the end token or at the completion's token count,
equal to the completion after stripping whitespace); the same three for
the frozen model without a prompt as `baseline_*`.

Example:
```python
config = TrainConfig(out="run", task="causal-lm", model="gpt2/", data="pairs.jsonl")
metrics = workflow.train(config)
metrics["exact_match"], metrics["baseline_exact_match"]
```
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt import checkpoints
from tf_softprompt import data as data_lib
from tf_softprompt.training import models, pipeline, run_dir, splits
from tf_softprompt.training import precision as precision_lib
from tf_softprompt.training.completion_data import (
    decode,
    encode_pairs,
    encode_texts,
    scaled_weights,
    special_tokens,
)
from tf_softprompt.training.generation import greedy_completions
from tf_softprompt.training.run_record import CAUSAL_LM_KIND, RunRecord


def completion_loss(labels, logits):
    """Per-example loss `[b]`: the weighted sum of next-token cross-entropy
    (`labels`: `{"targets", "weights"}` `[b, T]`)."""
    losses = keras.losses.sparse_categorical_crossentropy(
        labels["targets"], tf.cast(logits, tf.float32), from_logits=True
    )
    return tf.reduce_sum(losses * labels["weights"], axis=-1)


def token_loss(model, encoded, batch_size):
    """`(summed cross-entropy, loss tokens)` of `model` over `encoded`."""
    forward = tf.function(lambda features: model(features, training=False))
    total, count = 0.0, 0.0
    for begin in range(0, len(encoded), batch_size):
        part = slice(begin, begin + batch_size)
        logits = forward(
            {
                "token_ids": tf.constant(encoded.token_ids[part]),
                "padding_mask": tf.constant(encoded.padding_mask[part]),
            }
        )
        labels = {
            "targets": tf.constant(encoded.targets[part]),
            "weights": tf.constant(encoded.weights[part]),
        }
        total += float(tf.reduce_sum(completion_loss(labels, logits)))
        count += float(encoded.weights[part].sum())
    return total, count


def exact_match(model, preprocessor, encoded, batch_size):
    """The fraction of rows whose greedy completion, decoded and stripped,
    equals the completion stripped."""
    generated = greedy_completions(model, preprocessor, encoded, batch_size)
    decoded = decode(preprocessor.tokenizer, generated)
    hits = [d.strip() == c.strip() for d, c in zip(decoded, encoded.completions)]
    return float(np.mean(hits))


def figures(model, preprocessor, encoded, batch_size, prefix="", generate=True):
    """`completion_loss`, `perplexity` and (for pairs, unless not
    `generate`) `exact_match`."""
    total, count = token_loss(model, encoded, batch_size)
    loss = total / max(count, 1.0)
    result = {
        f"{prefix}completion_loss": loss,
        f"{prefix}perplexity": float(np.exp(min(loss, 50.0))),
    }
    if generate and encoded.completions is not None:
        result[f"{prefix}exact_match"] = exact_match(
            model, preprocessor, encoded, batch_size
        )
    return result


def summary(metrics):
    """Human-readable lines of a causal-LM run's metrics."""

    def describe(prefix):
        parts = [
            f"completion loss {metrics[prefix + 'completion_loss']:.4f} nats/token",
            f"perplexity {metrics[prefix + 'perplexity']:.2f}",
        ]
        if prefix + "exact_match" in metrics:
            parts.append(f"exact match {metrics[prefix + 'exact_match']:.4f}")
        return ", ".join(parts)

    lines = [f"On {metrics['eval_examples']} held-out rows: {describe('')}"]
    if "baseline_completion_loss" in metrics:
        lines.append(f"The frozen model without a prompt: {describe('baseline_')}")
    return lines


class CompletionTask:
    """A prompt-tuned causal LM (`tasks` describes the interface).

    Args:
        config: the run's `TrainConfig` (`task="causal-lm"`).
        model_path: the resolved preset name or directory.
    """

    kind = CAUSAL_LM_KIND
    loss_fn = staticmethod(completion_loss)

    def __init__(self, config, model_path):
        self.config = config
        self.model_path = model_path
        self.handle = None

    # --- data ---------------------------------------------------------------

    def _columns(self):
        config = self.config
        if config.plain_text:
            return (config.text_column,)
        return (config.prompt_column, config.completion_column)

    def _read(self, path):
        rows = data_lib.read_rows(path, self._columns())
        if not rows:
            raise data_lib.DataError(f"{path} holds no rows.")
        return rows

    def _encode(self, path, rows):
        config = self.config
        if config.plain_text:
            texts = [row[config.text_column] for _, row in rows]
            return encode_texts(self.preprocessor, texts, config.sequence_length)
        return encode_pairs(
            self.preprocessor,
            [row[config.prompt_column] for _, row in rows],
            [row[config.completion_column] for _, row in rows],
            config.sequence_length,
            truncate_prompt=config.truncate_prompt,
            where=[(path, line) for line, _ in rows],
        )

    def prepare(self):
        config = self.config
        checkpoints.check_causal_lm(self.model_path)
        train_rows = self._read(config.data)
        eval_rows = self._read(config.eval_data) if config.eval_data else None
        self.preprocessor = checkpoints.load_causal_lm_preprocessor(
            self.model_path, config.sequence_length
        )
        self.train = self._encode(config.data, train_rows)
        if eval_rows is None:
            kept, held = splits.held_out(
                len(self.train), config.validation_split, config.seed
            )
            self.train, self.held = self.train.take(kept), self.train.take(held)
        else:
            self.held = self._encode(config.eval_data, eval_rows)
        self.steps_per_epoch = pipeline.steps_per_epoch(
            len(self.train), config.batch_size
        )
        self.source = os.path.abspath(config.data)

    @property
    def data_metrics(self):
        return {
            "train_examples": len(self.train),
            "eval_examples": len(self.held),
            "data": self.source,
            "loss_tokens": int(self.train.weights.sum()),
        }

    def dataset(self, epoch, skip_steps, input_context):
        config = self.config
        order = pipeline.epoch_indices(
            len(self.train), config.batch_size, config.seed, epoch
        )
        weights = scaled_weights(self.train.weights[order], config.batch_size)
        skip = skip_steps * config.batch_size
        order, weights = order[skip:], weights[skip:]
        dataset = tf.data.Dataset.from_tensor_slices(
            (
                {
                    "token_ids": self.train.token_ids[order],
                    "padding_mask": self.train.padding_mask[order],
                },
                {"targets": self.train.targets[order], "weights": weights},
            )
        )
        return pipeline.per_replica_batches(dataset, config.batch_size, input_context)

    # --- models -------------------------------------------------------------

    def _base(self):
        model, _ = checkpoints.load_causal_lm(
            self.model_path, self.config.sequence_length, self.preprocessor
        )
        if self.config.base_dropout is not None:
            from tf_softprompt import hub

            hub.set_dropout(model, self.config.base_dropout)
        return model

    def build_prompted(self):
        model = self._base()
        self.handle = models.enable_prompt(model, self.config, self.preprocessor, [])
        self.handle.check_sequence_length(self.config.sequence_length)
        return model

    # --- figures ------------------------------------------------------------

    def validate(self, model):
        held, batch_size = self.held, self.config.batch_size
        return figures(model, None, held, batch_size, "val_", generate=False)

    def evaluate(self, model):
        return figures(model, self.preprocessor, self.held, self.config.batch_size)

    def baseline(self, train):
        """The frozen model without a prompt, evaluated (nothing to train)."""
        del train
        with precision_lib.policy(self.config.precision):
            model = self._base()
        return figures(
            model, self.preprocessor, self.held, self.config.batch_size, "baseline_"
        )

    def save(self, out, model):
        config, handle = self.config, self.handle
        name = os.path.splitext(os.path.basename(config.data))[0]
        handle.save_prompt(f"{out}/{run_dir.PROMPT_FILE}", task=name)
        columns = {
            key: getattr(config, f"{key}_column")
            for key in ("text", "prompt", "completion")
        }
        start, _, _ = special_tokens(self.preprocessor)
        RunRecord(
            kind=CAUSAL_LM_KIND,
            model=config.model,
            model_path=self.model_path,
            task_class=type(model).__name__,
            backbone_class=type(model.backbone).__name__,
            method=handle.method.name,
            prompt_length=int(handle.num_prompt_tokens),
            offset=int(handle.offset),
            sequence_length=config.sequence_length,
            preprocessor={"add_start_token": bool(start)},
            columns={k: v for k, v in columns.items() if v is not None},
            data=self.source,
            training=run_dir.training_settings(config),
        ).write(out)

    summary_of = staticmethod(summary)

    @staticmethod
    def evaluate_run_dir(args):
        """`tf-softprompt eval` of a causal-LM run on `args.data`: `figures`
        with and (unless `--no-baseline`) without the prompt."""
        trained = run_dir.load_trained_causal_lm(args.out)
        run = trained.run
        if args.data is None:
            raise ValueError(
                "Pass the held-out prompt/completion file with --data FILE."
            )
        text = args.text_column or (
            None if args.prompt_column else run.columns.get("text")
        )
        if text is not None:
            rows = data_lib.read_rows(args.data, (text,))
            encoded = encode_texts(
                trained.preprocessor,
                [row[text] for _, row in rows],
                int(run["sequence_length"]),
            )
        else:
            prompt = args.prompt_column or run.columns.get("prompt", "prompt")
            completion = args.completion_column or run.columns.get(
                "completion", "completion"
            )
            rows = data_lib.read_rows(args.data, (prompt, completion))
            encoded = encode_pairs(
                trained.preprocessor,
                [row[prompt] for _, row in rows],
                [row[completion] for _, row in rows],
                int(run["sequence_length"]),
                truncate_prompt=bool(run.training.get("truncate_prompt")),
                where=[(args.data, line) for line, _ in rows],
            )
        if not rows:
            raise data_lib.DataError(f"{args.data} holds no rows.")
        metrics = figures(trained.model, trained.preprocessor, encoded, args.batch_size)
        if args.baseline:
            base, _ = run_dir.load_causal_lm(run)
            metrics.update(
                figures(
                    base, trained.preprocessor, encoded, args.batch_size, "baseline_"
                )
            )
        return {
            **metrics,
            "eval_examples": len(encoded),
            "data": os.path.abspath(args.data),
        }
