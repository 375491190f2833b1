"""Several trained prompts for one base model, as one padded table.

K prompts of lengths `P_1..P_K` become one `[K * Pmax, H]` table: task `k`
owns rows `[k * Pmax, k * Pmax + P_k)`, and the rest of its block is zero.
With V real ids, row `r` of the table is the virtual id `V + r`, so a
`PromptEmbedding` with `K * Pmax` prompt tokens serves every task at once:
each example gets the virtual ids of its own task's block, and the padded
positions are masked out and moved behind the text (`insert_prompt_ids`),
so a shorter prompt sees exactly the positions it was trained with.

Every prompt must come from the same base: its artifact's
`vocab_fingerprint` must equal the fingerprint of the model being exported.

Example:
```python
table = MultiTaskPromptTable.from_artifacts(
    {"sst2": "sst2.prompt.npz", "topic": "topic.prompt.npz"}, vocabulary
)
index = table.task_index(tf.constant(["topic", "sst2"]))  # [1, 0]
ids, mask = table.prompt_ids(index)  # [2, Pmax] virtual ids and mask
```
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_softprompt import artifact, ops


@dataclasses.dataclass(frozen=True)
class MultiTaskPromptTable:
    """K task prompts for one base, padded into `[K * Pmax, H]`.

    Attributes:
        tasks: tuple of K task names, in table order.
        lengths: tuple of K prompt lengths `P_k`.
        table: float32 array `[K * Pmax, H]`.
        vocab_size: int, V; the table's row `r` is virtual id `V + r`.
        offset: int, where the prompt sits in the sequence (shared by all).
        vocab_fingerprint: str, the base's fingerprint.
        method: `"embedding"` or `"prepend"`, how the prompts were trained.
    """

    tasks: tuple
    lengths: tuple
    table: np.ndarray
    vocab_size: int
    offset: int
    vocab_fingerprint: str
    method: str = "embedding"

    @property
    def max_length(self):
        """Pmax, the padded prompt length of every task."""
        return max(self.lengths)

    @property
    def num_rows(self):
        """`K * Pmax`, the number of virtual ids the table needs."""
        return len(self.tasks) * self.max_length

    @classmethod
    def from_arrays(cls, prompts, vocabulary, offset=0, method="embedding"):
        """Build from `{task: [P_k, H] array}` trained on `vocabulary`.

        Args:
            prompts: dict (or list of pairs) of task name to `[P_k, H]` array.
            vocabulary: `[V, H]` frozen embedding matrix of the base, or
                `None` for prompts not addressed by virtual ids (a
                `PromptPrepend` model's own prompt; no fingerprint).
            offset: int, the prompt's position in the sequence.
            method: `"embedding"` or `"prepend"`.
        """
        items = list(dict(prompts).items())
        if not items:
            raise ValueError("Pass at least one prompt. Received: prompts={}.")
        if vocabulary is None:  # a PromptPrepend model's own prompt: no ids
            vocab = None
            hidden = int(np.shape(items[0][1])[1])
        else:
            vocab = np.asarray(vocabulary, dtype=np.float32)
            hidden = vocab.shape[1]
        pmax = max(int(np.shape(values)[0]) for _, values in items)
        table = np.zeros((len(items) * pmax, hidden), np.float32)
        for k, (task, values) in enumerate(items):
            values = np.asarray(values, np.float32)
            if values.ndim != 2 or values.shape[1] != hidden:
                raise ValueError(
                    f"The prompt for task {task!r} has shape {list(values.shape)}"
                    f" but the base has hidden_dim={hidden}; it must be "
                    f"[num_prompt_tokens, {hidden}]."
                )
            table[k * pmax : k * pmax + values.shape[0]] = values
        return cls(
            tasks=tuple(str(task) for task, _ in items),
            lengths=tuple(int(np.shape(values)[0]) for _, values in items),
            table=table,
            vocab_size=0 if vocab is None else int(vocab.shape[0]),
            offset=int(offset),
            vocab_fingerprint=None
            if vocab is None
            else artifact.vocab_fingerprint(vocab),
            method=method,
        )

    @classmethod
    def from_artifacts(cls, paths, vocabulary):
        """Build from prompt artifacts (`.npz`), all trained on `vocabulary`.

        Args:
            paths: a list of artifact paths (each task named by its
                metadata's `task`), or a dict `{task: path}`.
            vocabulary: `[V, H]` frozen embedding matrix of the base being
                exported.

        Raises:
            ValueError: if an artifact was trained on another base (its
                vocabulary fingerprint differs), two prompts share a task name,
                or their offsets differ.
        """
        if isinstance(paths, dict):
            named = list(paths.items())
        else:
            named = [(None, path) for path in paths]
        prompts, offsets, methods = {}, {}, {}
        for task, path in named:
            values, metadata = artifact.load_prompt(path, vocabulary)
            task = metadata.get("task", "default") if task is None else task
            if task in prompts:
                raise ValueError(
                    f"Two prompts are named task {task!r} (the second is "
                    f"{path!r}). Task names select prompts at serving time and "
                    "must be unique; pass `{task: path}` to rename one."
                )
            prompts[task] = values
            offsets[task] = int(metadata.get("offset", 0))
            methods[task] = metadata.get("method", "embedding")
        for what, values in (("offset", offsets), ("method", methods)):
            if len(set(values.values())) > 1:
                raise ValueError(
                    f"All prompts in one export must share one {what}. Received "
                    f"per task: {values}. Re-train them with one {what}."
                )
        return cls.from_arrays(
            prompts,
            vocabulary,
            offset=next(iter(offsets.values())),
            method=next(iter(methods.values())),
        )

    def task_index(self, task):
        """Map task names `[B]` (string) to table indices `[B]` (int32).

        An unknown name fails with InvalidArgument listing the known tasks.
        """
        names = tf.constant(list(self.tasks))
        matches = tf.equal(task[:, None], names[None, :])
        known = tf.reduce_any(matches, axis=1)
        check = tf.debugging.Assert(
            tf.reduce_all(known),
            [
                f"Unknown task. Known tasks: {', '.join(self.tasks)}. "
                "Received unknown task names:",
                tf.boolean_mask(task, tf.logical_not(known)),
            ],
            name="check_task",
        )
        with tf.control_dependencies([check]):
            return tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)

    def check_task_id(self, task_id):
        """Assert integer task ids `[B]` lie in `[0, K)`; returns them."""
        k = len(self.tasks)
        check = tf.debugging.Assert(
            tf.reduce_all((task_id >= 0) & (task_id < k)),
            [
                f"task_id must lie in [0, {k}) for tasks {', '.join(self.tasks)}."
                " Received:",
                task_id,
            ],
            name="check_task_id",
        )
        with tf.control_dependencies([check]):
            return tf.identity(task_id)

    def prompt_ids(self, task_index):
        """The virtual ids and mask of each example's prompt.

        Args:
            task_index: int32 `[B]`, indices into `tasks`.

        Returns:
            `(ids, mask)`, both `[B, Pmax]`: ids `V + k * Pmax + j` (int32),
            mask `True` for `j < P_k`.
        """
        pmax = self.max_length
        steps = tf.range(pmax, dtype=tf.int32)
        ids = self.vocab_size + task_index[:, None] * pmax + steps[None, :]
        lengths = tf.gather(tf.constant(self.lengths, tf.int32), task_index)
        return ids, steps[None, :] < lengths[:, None]


def insert_prompt_ids(token_ids, padding_mask, prompt_ids, prompt_mask, offset):
    """Insert per-example prompt ids at `offset` and pack valid positions.

    Masked prompt positions (a task shorter than Pmax) move behind the text
    with the padding, so every example reads `[specials] prompt text pad`
    with its prompt at the positions it was trained at.

    Args:
        token_ids: int32 `[B, T]`.
        padding_mask: bool `[B, T]`.
        prompt_ids: int32 `[B, Pmax]`.
        prompt_mask: bool `[B, Pmax]`.
        offset: int, the insertion position.

    Returns:
        `(token_ids, padding_mask)`, `[B, Pmax + T]` each.
    """
    ids = ops.insert_along_sequence(
        token_ids[..., None], prompt_ids[..., None], offset
    )[..., 0]
    mask = ops.insert_along_sequence(
        padding_mask[..., None], prompt_mask[..., None], offset
    )[..., 0]
    perm = ops.pack_permutation(mask)
    return ops.gather_rows(ids, perm), ops.gather_rows(mask, perm)
