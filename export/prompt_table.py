"""Several trained prompts for one base model, as one padded table.

K prompts of lengths `P_1..P_K` become one table padded along the method's
token axis (`tf_softprompt.methods`): `[K * Pmax, H]` for forms 1 and 2,
`[L, 2, K * Pmax, kv_heads, head_dim]` for a prefix. Task `k` owns tokens
`[k * Pmax, k * Pmax + P_k)`, and the rest of its block is zero. Token `r`
of the table is named by the id `V + r` (V real ids), for every method:
forms 1 and 2 insert these virtual ids into the sequence, a prefix reads
its rows `r` in every attention layer. Each example gets the ids of its own
task's block, and the padded slots are masked (forms 1 and 2 also move them
behind the text), so a shorter prompt sees exactly what it was trained with.

Every prompt must come from the same base: its artifact's fingerprint
(`vocab_fingerprint`, or a prefix's `base_fingerprint`) must equal the
model's.

Example:
```python
table = MultiTaskPromptTable.from_artifacts(
    {"sst2": "sst2.prompt.npz", "topic": "topic.prompt.npz"}, vocabulary
)
index = table.task_index(tf.constant(["topic", "sst2"]))  # [1, 0]
ids, mask = table.prompt_ids(index)  # [2, Pmax] ids and mask
```
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_softprompt import artifact, methods


@dataclasses.dataclass(frozen=True)
class MultiTaskPromptTable:
    """K task prompts for one base, padded along the method's token axis.

    Attributes:
        tasks: tuple of K task names, in table order.
        lengths: tuple of K prompt lengths `P_k`.
        table: float32 array, the padded prompts (`K * Pmax` tokens).
        vocab_size: int, V; the table's token `r` is named `V + r`.
        offset: int, where forms 1 and 2 put the prompt (shared by all).
        fingerprint: str, the base's fingerprint (`None` when unchecked).
        method: str, the method's name.
        fingerprint_key: str, which fingerprint it is.
    """

    tasks: tuple
    lengths: tuple
    table: np.ndarray
    vocab_size: int
    offset: int
    fingerprint: str
    method: str = "embedding"
    fingerprint_key: str = "vocab_fingerprint"

    @property
    def max_length(self):
        """Pmax, the padded prompt length of every task."""
        return max(self.lengths)

    @property
    def num_rows(self):
        """`K * Pmax`, the number of prompt tokens the table needs."""
        return len(self.tasks) * self.max_length

    @property
    def takes_positions(self):
        """Whether the prompt occupies sequence slots (forms 1 and 2)."""
        return bool(methods.get(self.method).sequence_slots(1))

    @property
    def sequence_slots(self):
        """Sequence positions the prompts take in front of the text: Pmax
        for prompts in the sequence (forms 1 and 2), else 0."""
        return methods.get(self.method).sequence_slots(self.max_length)

    @property
    def vocab_fingerprint(self):
        """The vocabulary fingerprint (forms 1 and 2), else `None`."""
        return self.fingerprint if self.fingerprint_key == "vocab_fingerprint" else None

    def task_prompt(self, k):
        """Task `k`'s own prompt, unpadded (the method's shape)."""
        axis = methods.get(self.method).token_axis
        start = k * self.max_length
        return np.take(self.table, range(start, start + self.lengths[k]), axis=axis)

    @classmethod
    def from_arrays(
        cls,
        prompts,
        vocabulary=None,
        offset=0,
        method="embedding",
        *,
        vocab_size=None,
        fingerprint=None,
    ):
        """Build from `{task: array}` trained on one base.

        Args:
            prompts: dict (or list of pairs) of task name to array (the
                method's shape; lengths may differ along its token axis).
            vocabulary: `[V, H]` frozen embedding matrix of the base, for
                V and the vocabulary fingerprint (forms 1 and 2); `None` for
                prompts not addressed by virtual ids in a core-layer model
                (no fingerprint) or when `vocab_size`/`fingerprint` are given.
            offset: int, the prompt's position in the sequence.
            method: a method name.
            vocab_size: int, V, when no vocabulary is given.
            fingerprint: the base's fingerprint, when no vocabulary is given
                (a prefix's `base_fingerprint`).
        """
        method = methods.get(method)
        items = list(dict(prompts).items())
        if not items:
            raise ValueError("Pass at least one prompt. Received: prompts={}.")
        axis = method.token_axis
        arrays = [(str(task), np.asarray(values, np.float32)) for task, values in items]
        reference = arrays[0][1]
        for task, values in arrays:
            other = [d for i, d in enumerate(values.shape) if i != axis]
            first = [d for i, d in enumerate(reference.shape) if i != axis]
            if values.ndim != reference.ndim or other != first:
                raise ValueError(
                    f"The prompt for task {task!r} has shape {list(values.shape)}, "
                    f"but task {arrays[0][0]!r}'s has {list(reference.shape)}; "
                    f"{method.name} prompts of one export may differ only in "
                    f"their length (axis {axis})."
                )
        if vocabulary is not None:
            vocab = np.asarray(vocabulary, dtype=np.float32)
            if method.sequence_slots(1) and vocab.shape[1] != reference.shape[-1]:
                raise ValueError(
                    f"The prompts have hidden size {reference.shape[-1]} but the "
                    f"base has hidden_dim={vocab.shape[1]}; they must be "
                    f"[num_prompt_tokens, {vocab.shape[1]}]."
                )
            vocab_size = int(vocab.shape[0])
            if fingerprint is None and method.fingerprint_key == "vocab_fingerprint":
                fingerprint = artifact.vocab_fingerprint(vocab)
        lengths = [int(values.shape[axis]) for _, values in arrays]
        pmax = max(lengths)
        shape = list(reference.shape)
        shape[axis] = len(arrays) * pmax
        table = np.zeros(shape, np.float32)
        for k, (_, values) in enumerate(arrays):
            index = [slice(None)] * len(shape)
            index[axis] = slice(k * pmax, k * pmax + values.shape[axis])
            table[tuple(index)] = values
        return cls(
            tasks=tuple(task for task, _ in arrays),
            lengths=tuple(lengths),
            table=table,
            vocab_size=int(vocab_size or 0),
            offset=int(offset),
            fingerprint=fingerprint,
            method=method.name,
            fingerprint_key=method.fingerprint_key,
        )

    @classmethod
    def from_artifacts(
        cls,
        paths,
        vocabulary=None,
        *,
        method=None,
        dims_metadata=None,
        fingerprint=None,
        vocab_size=None,
    ):
        """Build from prompt artifacts (`.npz`), all trained on one base.

        Args:
            paths: a list of artifact paths (each task named by its
                metadata's `task`), or a dict `{task: path}`.
            vocabulary: `[V, H]` frozen embedding matrix of the base being
                exported (forms 1 and 2: V and the fingerprint).
            method: the model's method name, or `None` to take the
                artifacts'.
            dims_metadata: the model's dims (`method.shape_metadata`), checked.
            fingerprint: the model's fingerprint for the method (a prefix's
                `base_fingerprint`); computed from `vocabulary` for forms 1
                and 2 when omitted.
            vocab_size: int, V, when no vocabulary is given.

        Raises:
            ValueError: if an artifact was trained on another base (its
                fingerprint differs) or with another method, two prompts
                share a task name, or their offsets differ.
        """
        if isinstance(paths, dict):
            named = list(paths.items())
        else:
            named = [(None, path) for path in paths]
        loaded_all = [(task, artifact.load_artifact(path)) for task, path in named]
        names = {loaded.method for _, loaded in loaded_all}
        if method is None:
            if len(names) > 1:
                raise ValueError(
                    "All prompts in one export must share one method. Received: "
                    f"{sorted(names)}. Export each method separately."
                )
            method = names.pop()
        method = methods.get(method)
        if vocabulary is not None:
            vocab = np.asarray(vocabulary, np.float32)
            vocab_size = int(vocab.shape[0])
            if fingerprint is None and method.fingerprint_key == "vocab_fingerprint":
                fingerprint = artifact.vocab_fingerprint(vocab)
            if dims_metadata is None and method.sequence_slots(1):
                dims_metadata = {
                    "hidden_dim": int(vocab.shape[1]),
                    "vocab_size": vocab_size,
                }
        prompts, offsets = {}, {}
        for task, loaded in loaded_all:
            artifact.check_artifact(
                loaded,
                method.name,
                dims_metadata or {},
                method.fingerprint_key,
                fingerprint,
            )
            task = loaded.metadata.get("task", "default") if task is None else task
            if task in prompts:
                raise ValueError(
                    f"Two prompts are named task {task!r} (the second is "
                    f"{loaded.path!r}). Task names select prompts at serving time "
                    "and must be unique; pass `{task: path}` to rename one."
                )
            prompts[task] = loaded.values
            offsets[task] = int(loaded.metadata.get("offset", 0))
        if len(set(offsets.values())) > 1:
            raise ValueError(
                "All prompts in one export must share one offset. Received per "
                f"task: {offsets}. Re-train them with one offset."
            )
        return cls.from_arrays(
            prompts,
            offset=next(iter(offsets.values())),
            method=method.name,
            vocab_size=vocab_size,
            fingerprint=fingerprint,
        )

    def task_index(self, task):
        """Map task names `[B]` (string) to table indices `[B]` (int32).

        An unknown name fails with InvalidArgument listing the known tasks.
        """
        return task_index(self.tasks, task)

    def check_task_id(self, task_id):
        """Assert integer task ids `[B]` lie in `[0, K)`; returns them."""
        return check_task_id(self.tasks, task_id)

    def prompt_ids(self, task_index):
        """The prompt ids and mask of each example's prompt.

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


def task_index(names, task):
    """Map names `[B]` (string) to their indices in `names` (int32 `[B]`).

    An unknown name fails with InvalidArgument listing the known ones.
    """
    constants = tf.constant(list(names))
    matches = tf.equal(task[:, None], constants[None, :])
    known = tf.reduce_any(matches, axis=1)
    check = tf.debugging.Assert(
        tf.reduce_all(known),
        [
            f"Unknown task. Known tasks: {', '.join(names)}. "
            "Received unknown task names:",
            tf.boolean_mask(task, tf.logical_not(known)),
        ],
        name="check_task",
    )
    with tf.control_dependencies([check]):
        return tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)


def check_task_id(names, task_id):
    """Assert integer ids `[B]` lie in `[0, len(names))`; returns them."""
    k = len(names)
    check = tf.debugging.Assert(
        tf.reduce_all((task_id >= 0) & (task_id < k)),
        [
            f"task_id must lie in [0, {k}) for tasks {', '.join(names)}. Received:",
            task_id,
        ],
        name="check_task_id",
    )
    with tf.control_dependencies([check]):
        return tf.identity(task_id)
