"""Prompt/completion rows (and plain texts) as a causal LM trains on them.

Each row is tokenised as `generate` will see it: the prompt as the
preprocessor's `generate_preprocess` packs it (its start token, if any,
then the prompt's tokens), followed by the completion's tokens and the end
token. The model reads all tokens but the last; position t predicts token
t + 1, and the loss counts position t only where token t + 1 belongs to
the completion (the end token included).

Example:
```python
encoded = encode_pairs(preprocessor, ["Review: great."], [" positive"], 32)
encoded.weights.sum()  # the completion's tokens and the end token
```
"""

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Encoded:
    """Tokenised rows, padded to the run's T positions.

    Attributes:
        token_ids: int32 `[N, T]`, what the model reads.
        padding_mask: bool `[N, T]`.
        targets: int32 `[N, T]`, the next token at each position.
        weights: float32 `[N, T]`, 1 where the next token is in the loss.
        prompt_ids: the rows' prompt tokens as `generate` packs them.
        completion_ids: the rows' completion tokens (no end token).
        completions: the rows' completion texts (`None` for plain texts).
    """

    token_ids: np.ndarray
    padding_mask: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    prompt_ids: list
    completion_ids: list
    completions: list = None

    def __len__(self):
        return len(self.token_ids)

    def take(self, indices):
        indices = list(indices)

        def pick(items):
            return None if items is None else [items[i] for i in indices]

        return Encoded(
            self.token_ids[indices],
            self.padding_mask[indices],
            self.targets[indices],
            self.weights[indices],
            pick(self.prompt_ids),
            pick(self.completion_ids),
            pick(self.completions),
        )


def _ids(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def special_tokens(preprocessor):
    """`(start, end, pad)`: the start and end token lists the preprocessor
    packs around a text (empty where it adds none, e.g. no start token for
    Hugging Face GPT-2; Llama 3's packer holds lists), and the pad id."""
    if not preprocessor.built:
        preprocessor.build(None)
    tokenizer = preprocessor.tokenizer
    end = tokenizer.end_token_id if preprocessor.add_end_token else None
    pad = getattr(tokenizer, "pad_token_id", None)
    return (
        _ids(preprocessor.packer.start_value),
        _ids(end),
        0 if pad is None else int(pad),
    )


def stop_token_ids(preprocessor):
    """The ids that end a generation (Llama 3 has two)."""
    tokenizer = preprocessor.tokenizer
    ids = [tokenizer.end_token_id]
    if getattr(tokenizer, "end_token2_id", None) is not None:
        ids.append(tokenizer.end_token2_id)
    return tuple(ids)


def tokenize(tokenizer, texts):
    """Token ids of each text, as lists of ints."""
    if not texts:
        return []
    ids = tokenizer(tf.constant(list(texts)))
    if hasattr(ids, "to_list"):
        ids = ids.to_list()
    elif hasattr(ids, "numpy"):
        ids = ids.numpy().tolist()
    return [[int(t) for t in row] for row in ids]


def _pack(rows, loss_starts, sequence_length, pad):
    """`Encoded` arrays of full token rows; position t's target is token
    t + 1, in the loss from token `loss_starts[i]` on."""
    n = len(rows)
    token_ids = np.full((n, sequence_length), pad, np.int32)
    targets = np.full((n, sequence_length), pad, np.int32)
    mask = np.zeros((n, sequence_length), bool)
    weights = np.zeros((n, sequence_length), np.float32)
    for i, (row, start) in enumerate(zip(rows, loss_starts)):
        length = len(row) - 1
        token_ids[i, :length] = row[:-1]
        targets[i, :length] = row[1:]
        mask[i, :length] = True
        weights[i, max(start - 1, 0) : length] = 1.0
    return token_ids, mask, targets, weights


def encode_pairs(
    preprocessor,
    prompts,
    completions,
    sequence_length,
    *,
    truncate_prompt=False,
    where=None,
):
    """Tokenise prompt/completion pairs (see the module docstring).

    Args:
        preprocessor: the model's `CausalLMPreprocessor`.
        prompts, completions: lists of str.
        sequence_length: T, the positions the model reads.
        truncate_prompt: cut prompts from the left (after the start token)
            where prompt + completion + end token exceed T + 1 tokens;
            otherwise such rows are refused.
        where: `[(path, line)]` of the rows, for error messages.

    Returns:
        `Encoded`.

    Raises:
        ValueError: rows too long (how many, the first one's line, the
            sequence length that would fit, and the `--truncate-prompt`
            option), or a completion too long on its own.
    """
    head, tail, pad = special_tokens(preprocessor)
    prompt_ids = [head + ids for ids in tokenize(preprocessor.tokenizer, prompts)]
    completion_ids = tokenize(preprocessor.tokenizer, completions)
    where = where or [("the data", i + 1) for i in range(len(prompts))]
    budget = sequence_length + 1  # the model reads all tokens but the last
    too_long = [
        i
        for i, (p, c) in enumerate(zip(prompt_ids, completion_ids))
        if len(p) + len(c) + len(tail) > budget
    ]
    if too_long and not truncate_prompt:
        first = too_long[0]
        needed = max(
            len(prompt_ids[i]) + len(completion_ids[i]) + len(tail) - 1
            for i in too_long
        )
        path, line = where[first]
        raise ValueError(
            f"{path}, line {line}: {len(too_long)} of {len(prompts)} rows have a "
            f"prompt plus completion longer than --sequence-length {sequence_length} "
            f"(the longest needs {needed}). Raise --sequence-length to {needed}, or "
            "pass --truncate-prompt to cut prompts from the left."
        )
    for i in too_long:
        keep = budget - len(completion_ids[i]) - len(tail) - len(head)
        if keep < 1:
            path, line = where[i]
            raise ValueError(
                f"{path}, line {line}: the completion alone has "
                f"{len(completion_ids[i])} tokens, too many for --sequence-length "
                f"{sequence_length} with at least one prompt token. Raise "
                "--sequence-length or shorten the completion."
            )
        prompt_ids[i] = head + prompt_ids[i][len(head) :][-keep:]
    rows = [p + c + tail for p, c in zip(prompt_ids, completion_ids)]
    arrays = _pack(rows, [len(p) for p in prompt_ids], sequence_length, pad)
    return Encoded(*arrays, prompt_ids, completion_ids, list(completions))


def encode_texts(preprocessor, texts, sequence_length):
    """Tokenise plain texts for language modelling: every token after the
    first in the loss, each row cut to T + 1 tokens as keras-hub's
    `CausalLMPreprocessor` cuts it."""
    start, end, pad = special_tokens(preprocessor)
    rows = [start + ids + end for ids in tokenize(preprocessor.tokenizer, texts)]
    rows = [row[: sequence_length + 1] for row in rows]
    arrays = _pack(rows, [1] * len(rows), sequence_length, pad)
    return Encoded(*arrays, [row[:1] for row in rows], [row[1:] for row in rows])


def scaled_weights(weights, global_batch_size):
    """Token weights `[N, T]`, in global-batch order, scaled so that each
    global batch's weights sum to `global_batch_size` (see the module
    docstring)."""
    batches = weights.reshape(-1, global_batch_size, weights.shape[-1])
    totals = batches.sum(axis=(1, 2), keepdims=True)
    scale = global_batch_size / np.maximum(totals, 1.0)
    return (batches * scale).reshape(weights.shape).astype(np.float32)


def decode_strings(texts):
    """A string tensor (or array) as Python strings, invalid UTF-8 (a
    byte-level BPE may stop inside a character) replaced by U+FFFD."""
    if hasattr(texts, "numpy"):
        texts = texts.numpy()
    return [
        t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
        for t in np.asarray(texts, dtype=object).tolist()
    ]


def in_graph(function):
    """`function` traced as TensorFlow runs it in a served graph.

    Eagerly, keras-hub tokenizers return Python strings with invalid UTF-8
    dropped; traced they return the bytes, as a SavedModel serves them.
    """
    return tf.function(tf.autograph.experimental.do_not_convert(function))


def decode(tokenizer, token_lists):
    """The texts of token id lists (`decode_strings`), as a served graph
    detokenises them."""
    if not token_lists:
        return []
    ragged = tf.ragged.constant(token_lists, dtype=tf.int32, ragged_rank=1)
    return decode_strings(in_graph(tokenizer.detokenize)(ragged))


def detokenize_generated(tokenizer, token_ids, padding_mask):
    """Generated ids to text, as keras-hub's `generate_postprocess` does.

    Positions outside `padding_mask` and the tokenizer's special tokens are
    dropped; an ordinary token that shares the pad id (GPT-2 pads with 0,
    which is "!") is kept.

    Args:
        tokenizer: a keras-hub tokenizer.
        token_ids: int `[B, L]`.
        padding_mask: `[B, L]`, true where a token is part of the output.

    Returns:
        string `[B]`.

    Example:
    >>> text = detokenize_generated(lm.preprocessor.tokenizer, ids, mask)
    """
    keep = tf.cast(padding_mask, tf.bool)
    special_ids = getattr(tokenizer, "special_token_ids", None)
    if special_ids is None:
        names = ("start_token_id", "end_token_id")
        special_ids = [getattr(tokenizer, n) for n in names if hasattr(tokenizer, n)]
    for special in special_ids:
        keep &= token_ids != special
    return tokenizer.detokenize(tf.ragged.boolean_mask(token_ids, keep))
