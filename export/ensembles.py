"""Prompt ensembles: one served name that runs K prompts for one task.

Lester et al. (2021, section 6) show that an ensemble of prompts trained for
one task, run through one frozen model, beats the average single prompt, and
here it costs batch rows, not model copies: the K member prompts (each with
its head) are ordinary tasks of the export's prompt table, and a request for
the ensemble's name runs as K rows of the same pass, one per member.

`Routes` maps every served name to the table tasks it runs: a plain task to
itself, an ensemble to its K members. `expand` turns a batch of `B` served
indices into `N` rows (`N = sum of the K's`), and `combine` averages the
members' rows back into `B` answers.

Combination rule: the arithmetic mean of the members' *probabilities*, and
the label is its argmax (a soft vote).

- It is the quantity the `probabilities` output promises: a distribution
  over the classes, comparable with a single prompt's.
- Its argmax approaches a majority vote (Lester et al.'s rule) as the
  members grow confident, and it breaks the ties a vote has with an even K
  by confidence instead of arbitrarily.
- A mean of *logits* (a geometric mean of probabilities, renormalised) lets
  one over-confident member outvote the others; the mean of probabilities
  is bounded by each member's own mass.

Served names are the table's tasks first (in table order), then the
ensembles (in the order given), so `predict_tokens`' `task_id` for an
ensemble is `K + j`.

Example:
```python
routes = Routes.build(table, {"sst": ["sst/0", "sst/1", "sst/2"]})
example, task = routes.expand(routes.task_index(tf.constant(["sst", "news"])))
# example [0, 0, 0, 1], task [0, 1, 2, 3]: three rows for "sst", one for "news"
```
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_softprompt.export import prompt_table

COMBINATION = "mean of the members' probabilities; label = its argmax"


@dataclasses.dataclass(frozen=True)
class Routes:
    """What each served name runs: one table task, or an ensemble's members.

    Attributes:
        tasks: tuple of the served names: the table's tasks, then the
            ensembles.
        members: tuple, per served name, of the table-task indices it runs.
        ensembles: dict `{name: [member task names]}`.
    """

    tasks: tuple
    members: tuple
    ensembles: dict

    @classmethod
    def build(cls, table, ensembles=None):
        """Routes over `table`'s tasks plus `ensembles`.

        Args:
            table: the `MultiTaskPromptTable`.
            ensembles: `None`, or `{name: [task, ...]}`, each member a task
                of `table` (at least two per ensemble).

        Raises:
            ValueError: for an ensemble named like a task or another
                ensemble, fewer than two members, a repeated member, or a
                member that is not in the table.
        """
        ensembles = dict(ensembles or {})
        tasks = list(table.tasks)
        members = [(k,) for k in range(len(tasks))]
        for name, names in ensembles.items():
            names = [str(n) for n in names]
            if name in tasks:
                raise ValueError(
                    f"The ensemble {name!r} has the name of a task (or of another "
                    f"ensemble). Served names must be unique; known: {tasks}."
                )
            unknown = [n for n in names if n not in table.tasks]
            if unknown:
                raise ValueError(
                    f"The ensemble {name!r} names members {unknown} that are not "
                    f"exported tasks. Exported tasks: {list(table.tasks)}."
                )
            if len(names) < 2 or len(set(names)) < len(names):
                raise ValueError(
                    f"An ensemble needs at least two different members. Received "
                    f"for {name!r}: {names}."
                )
            tasks.append(str(name))
            members.append(tuple(table.tasks.index(n) for n in names))
        return cls(tuple(tasks), tuple(members), ensembles)

    @property
    def has_ensembles(self):
        return bool(self.ensembles)

    def task_index(self, task):
        """Served names `[B]` -> indices `[B]`; unknown names fail listing
        the known ones (tasks and ensembles)."""
        return prompt_table.task_index(self.tasks, task)

    def check_task_id(self, task_id):
        """Assert served indices `[B]` lie in `[0, len(tasks))`."""
        return prompt_table.check_task_id(self.tasks, task_id)

    def member_tasks(self, served):
        """The table tasks of the served name `served` (a str)."""
        return list(self.members[self.tasks.index(served)])

    def expand(self, served_index):
        """One row per member: `(example [N], task [N])`, both int32.

        Row `n` is example `example[n]` run with table task `task[n]`; an
        example's rows are consecutive and in member order.
        """
        counts = tf.constant([len(m) for m in self.members], tf.int32)
        starts = tf.constant(
            np.cumsum([0] + [len(m) for m in self.members[:-1]]), tf.int32
        )
        flat = tf.constant([k for m in self.members for k in m], tf.int32)
        per_example = tf.gather(counts, served_index)
        batch = tf.shape(served_index)[0]
        example = tf.repeat(tf.range(batch), per_example)
        first_row = tf.cumsum(per_example, exclusive=True)
        within = tf.range(tf.shape(example)[0]) - tf.gather(first_row, example)
        start = tf.gather(starts, tf.gather(served_index, example))
        return example, tf.gather(flat, start + within)

    def combine(self, values, example, served_index):
        """The mean over each example's rows: `[N, ...]` -> `[B, ...]`."""
        batch = tf.shape(served_index)[0]
        total = tf.math.unsorted_segment_sum(values, example, batch)
        counts = tf.gather(
            tf.constant([len(m) for m in self.members], values.dtype), served_index
        )
        shape = tf.concat([[batch], tf.ones([tf.rank(values) - 1], tf.int32)], 0)
        return total / tf.reshape(counts, shape)


__all__ = ["COMBINATION", "Routes"]
