"""The labels of a classifier export: each served name's label names and
class count, and each task's text length.

Served names are the prompt table's tasks (in table order), then the
ensembles. Tasks of one export may have different labels and class counts:
`probabilities` has one column per class of the task with the most
classes, and a row's `num_classes` says how many are its task's.

Example:
```python
named = task_labels({"sst": ["neg", "pos"], "topic": ["a", "b", "c"]},
                    ["sst", "topic"], {"sst": 2, "topic": 3})
rows, classes = served_labels(named, table, routes=None)
```
"""


def task_labels(labels, tasks, classes):
    """`{task: [names]}` for the table's tasks (`[None]` for a baseline).

    Args:
        labels: `None` (`"0"`, `"1"`, ...), one list for every task, or
            `{task: names}`.
        tasks: the table's task names.
        classes: `{task: class count}` of each task's scores.
    """
    if isinstance(labels, dict):
        if sorted(labels) != sorted(t for t in tasks if t is not None):
            raise ValueError(
                "Per-task `labels` must name every exported task. Received labels "
                f"for {sorted(labels)}, tasks {sorted(t for t in tasks if t)}."
            )
        named = {t: [str(n) for n in labels[t]] for t in tasks}
    elif labels is None:
        named = {t: [str(i) for i in range(classes[t])] for t in tasks}
    else:
        named = {t: [str(n) for n in labels] for t in tasks}
    counts = {t: len(v) for t, v in named.items()}
    if counts != classes:
        if len(set(classes.values())) > 1 and not isinstance(labels, dict):
            fix = "pass `labels` as `{task: names}`, one list per task"
        else:
            fix = "pass one label name per class"
        shown = {"model": counts[None]} if None in counts else counts
        wanted = {"model": classes[None]} if None in classes else classes
        raise ValueError(
            f"Each task needs one label name per class of its head: {fix}. "
            f"Received label counts {shown} for class counts {wanted}."
        )
    return named


def served_labels(named, table, routes):
    """`(rows [E or 1][Cmax], classes [K or 1])`: label names per served
    name (tasks, then ensembles; padded with `""`) and class counts per
    table task, each collapsed to one row when all are equal."""
    tasks = list(table.tasks) if table is not None else [None]
    rows = [named[t] for t in tasks]
    if routes is not None:
        for name, members in routes.ensembles.items():
            differing = {m: named[m] for m in members if named[m] != named[members[0]]}
            if differing:
                raise ValueError(
                    f"The members of ensemble {name!r} must share their label names "
                    f"(their probabilities are averaged). {members[0]!r} has "
                    f"{named[members[0]]}, but {differing}."
                )
            rows.append(named[members[0]])
    classes = [len(named[t]) for t in tasks]
    width = max(classes)
    rows = [row + [""] * (width - len(row)) for row in rows]
    if all(row == rows[0] for row in rows):
        rows = rows[:1]
    if len(set(classes)) == 1:
        classes = classes[:1]
    return rows, classes


def text_limits(text_lengths, table, encoder):
    """Each table task's text positions, or `None` when all use the
    encoder's `length`."""
    if not text_lengths:
        return None
    tasks = list(table.tasks) if table is not None else []
    unknown = sorted(set(text_lengths) - set(tasks))
    if unknown:
        raise ValueError(
            f"`text_lengths` names {unknown}, which are not exported tasks {tasks}."
        )
    limits = []
    for task in tasks:
        value = text_lengths.get(task, encoder.length)
        if (
            isinstance(value, bool)
            or int(value) != value
            or not encoder.num_specials < value <= encoder.length
        ):
            raise ValueError(
                f"The text length of task {task!r} must be an integer in "
                f"({encoder.num_specials}, {encoder.length}] (the special tokens, "
                f"and the export's text positions). Received: {value!r}."
            )
        limits.append(int(value))
    if all(limit == encoder.length for limit in limits):
        return None
    return limits


def labels_per_served_name(named, routes):
    if routes is None or len(routes.tasks) < 2:
        return None
    table_tasks = [t for t in routes.tasks if t not in routes.ensembles]
    result = {t: named[t] for t in table_tasks}
    for name, members in routes.ensembles.items():
        result[name] = named[members[0]]
    return result


def classes_per_served_name(named, routes, tasks):
    """`{served name: class count}`; `None` keys for an unnamed task."""
    counts = {t if t is not None else "default": len(named[t]) for t in tasks}
    if routes is not None:
        for name, members in routes.ensembles.items():
            counts[name] = len(named[members[0]])
    return counts


__all__ = [
    "classes_per_served_name",
    "labels_per_served_name",
    "served_labels",
    "task_labels",
    "text_limits",
]
