"""In-graph text encoding for serving: strings to fixed-length token ids.

Truncation policy (the prompt is never truncated): a model served with
`sequence_length` L and prompt length Pmax holds `L - Pmax` text positions,
of which the start/end specials take their share, so each text keeps its
first `L - Pmax - num_specials` tokens and drops the rest. An empty string
becomes just the specials. Nothing is ever rejected for its length.

Example:
```python
encoder = TextEncoder(tokenizer, length=28)  # L=32, Pmax=4
token_ids, padding_mask = encoder(tf.constant(["a fine film", ""]))
# token_ids [2, 28]: [CLS] a fine film [SEP] 0 ...; [CLS] [SEP] 0 ...
```
"""

import tensorflow as tf


def _special_id(tokenizer, names):
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


class TextEncoder:
    """Tokenise, truncate, add specials and pad to a fixed length, in-graph.

    Args:
        tokenizer: callable mapping a `[B]` string tensor to ragged int ids
            `[B, None]` (a keras-hub tokenizer, or tensorflow-text ops).
        length: int, the text positions `L - Pmax` (specials included).
        start_id, end_id: ids wrapped around the text, or `None` for none.
            Default: the tokenizer's `cls_token_id`/`start_token_id` and
            `sep_token_id`/`end_token_id`.
        pad_id: id written after the text. Default: the tokenizer's
            `pad_token_id`, else 0.

    Call arguments:
        text: string tensor `[B]`.

    Returns:
        `(token_ids, padding_mask)`: int32 and bool tensors `[B, length]`.
    """

    def __init__(self, tokenizer, length, start_id=None, end_id=None, pad_id=None):
        self.tokenizer = tokenizer
        self.start_id, self.end_id, self.pad_id = self.resolve_specials(
            tokenizer, start_id, end_id, pad_id
        )
        self.length = int(length)
        if self.max_text_tokens < 1:
            raise ValueError(
                f"No room is left for text: {self.length} text positions minus "
                f"{self.num_specials} special tokens. Increase `sequence_length` "
                "or shorten the prompt (the prompt is never truncated)."
            )

    @staticmethod
    def resolve_specials(tokenizer, start_id=None, end_id=None, pad_id=None):
        """`(start_id, end_id, pad_id)`: the given ids, else the tokenizer's."""
        if start_id is None:
            start_id = _special_id(tokenizer, ("cls_token_id", "start_token_id"))
        if end_id is None:
            end_id = _special_id(tokenizer, ("sep_token_id", "end_token_id"))
        if pad_id is None:
            pad_id = _special_id(tokenizer, ("pad_token_id",)) or 0
        return start_id, end_id, pad_id

    @property
    def num_specials(self):
        return int(self.start_id is not None) + int(self.end_id is not None)

    @property
    def max_text_tokens(self):
        """Tokens kept from each text: `length - num_specials`."""
        return self.length - self.num_specials

    def __call__(self, text):
        tokens = self.tokenizer(text)
        if not isinstance(tokens, tf.RaggedTensor):
            tokens = tf.RaggedTensor.from_tensor(tokens)
        tokens = tf.cast(tokens[:, : self.max_text_tokens], tf.int32)
        batch = tf.shape(text)[:1]
        pieces = [tokens]
        if self.start_id is not None:
            pieces.insert(0, tf.fill(tf.concat([batch, [1]], 0), self.start_id))
        if self.end_id is not None:
            pieces.append(tf.fill(tf.concat([batch, [1]], 0), self.end_id))
        pieces = [
            p if isinstance(p, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(p)
            for p in pieces
        ]
        packed = tf.concat(pieces, axis=1)
        shape = [None, self.length]
        token_ids = packed.to_tensor(default_value=self.pad_id, shape=shape)
        padding_mask = tf.ones_like(packed, tf.bool).to_tensor(False, shape=shape)
        return token_ids, padding_mask

    def truncate(self, token_ids, padding_mask, limit):
        """Shorten encoded rows to `limit` positions each, numerically.

        For a multi-task export whose tasks were trained with different
        text lengths: each row keeps its first `limit - num_specials` text
        tokens and its end token, as `TextEncoder(tokenizer, limit)` would
        have encoded it. Rows must have this encoder's layout (start, text,
        end, then padding); static shapes, no string op.

        Args:
            token_ids: int32 `[B, length]`.
            padding_mask: bool `[B, length]`.
            limit: int32 `[B]`, each row's text positions (at most `length`).

        Returns:
            `(token_ids, padding_mask)`, `[B, length]`.
        """
        positions = tf.range(self.length, dtype=tf.int32)[None]
        used = tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1)
        kept = tf.minimum(used, limit)
        keep = tf.cast(padding_mask, tf.bool) & (positions < limit[:, None])
        token_ids = tf.where(keep, token_ids, self.pad_id)
        if self.end_id is not None:
            cut = (positions == kept[:, None] - 1) & (kept < used)[:, None]
            token_ids = tf.where(cut, self.end_id, token_ids)
        return token_ids, keep
