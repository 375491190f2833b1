"""`RunRecord`: a run directory's `run.json`, the one record type.

Every run directory is described by one `RunRecord`, whoever wrote it:
`tf-softprompt train` (classifiers and causal LMs) and `tf-softprompt
import-peft` build it with the same fields and write it with `write`; the
exporter, `eval`, `predict`, `generate` and `info` read it with `read`.
The JSON keys are the field names; keys a newer version adds are kept in
`extra` and written back unchanged.

Example:
```python
record = RunRecord.read("runs/sst2")
record.kind, record.method, record.labels  # "classifier", "prefix", [...]
record["sequence_length"]  # also readable as a mapping, as run.json is
```
"""

import collections.abc
import dataclasses
import json
import os

from tf_softprompt.fileio import atomic_write

RUN_FORMAT = "tf-softprompt-run/1"
RUN_FILE = "run.json"
PROMPT_FILE = "prompt.npz"
HEAD_FILE = "head.weights.npz"
CLASSIFIER_KIND = "classifier"
CAUSAL_LM_KIND = "causal_lm"
KINDS = (CLASSIFIER_KIND, CAUSAL_LM_KIND)


def write_json(path, obj):
    """Write JSON atomically (temporary file, then rename)."""
    payload = (
        json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    ).encode("utf-8")
    atomic_write(path, lambda f: f.write(payload))


def read_json(path, what):
    """Read a JSON file, explaining a missing one as a missing run."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist: no {what} was found. Pass the --out "
            "directory of a finished `tf-softprompt train` run."
        ) from None
    except ValueError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); the {what} is damaged."
        ) from None


@dataclasses.dataclass
class RunRecord(collections.abc.Mapping):
    """What rebuilds a tuned model: the base, the prompt and its place, the
    head, the data's columns, and how it was trained.

    Attributes:
        kind: `"classifier"` or `"causal_lm"`.
        model: the `--model` given (`"default"`: the packaged MiniLM).
        model_path: the preset name or directory loaded.
        task_class, backbone_class: the keras-hub classes built.
        method: the injection method's name.
        prompt_length: int, P.
        offset: int, where forms 1 and 2 put the prompt.
        sequence_length: int, the text's tokens (a causal LM: prompt text,
            completion and generated tokens).
        labels: classifier label names, in head order.
        pooling, normalize: the representation a classifier's head reads.
        head_variables: the head's variable paths (classifiers).
        prompt, head: the prompt artifact's and head's file names.
        preprocessor: causal-LM preprocessor settings (`add_start_token`).
        columns: the data file's columns (`text`, `label`, `prompt`,
            `completion`).
        data: where the training data came from.
        training: how it was trained (seed, epochs, batch size, learning
            rate, dropouts, precision, init, reparameterisation).
        source, placement: provenance of an imported adapter (PEFT).
        extra: keys this version does not know, kept as they are.
    """

    model: str
    model_path: str
    task_class: str
    backbone_class: str
    method: str
    prompt_length: int
    offset: int
    sequence_length: int
    kind: str = CLASSIFIER_KIND
    labels: list = None
    pooling: str = None
    normalize: bool = False
    head_variables: list = None
    prompt: str = PROMPT_FILE
    head: str = None
    preprocessor: dict = None
    columns: dict = dataclasses.field(default_factory=dict)
    data: str = None
    training: dict = dataclasses.field(default_factory=dict)
    source: dict = None
    placement: dict = None
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"A run's kind is one of {list(KINDS)}. Received: {self.kind!r}."
            )
        if self.kind == CLASSIFIER_KIND and self.head is None:
            self.head = HEAD_FILE

    @property
    def num_classes(self):
        return None if self.labels is None else len(self.labels)

    @property
    def is_causal_lm(self):
        return self.kind == CAUSAL_LM_KIND

    # --- run.json -----------------------------------------------------------

    def to_dict(self):
        """The `run.json` object (flat, as earlier versions wrote it)."""
        record = {
            "format": RUN_FORMAT,
            **self.extra,
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name not in ("columns", "training", "extra")
            },
            **{f"{name}_column": value for name, value in self.columns.items()},
            **self.training,
            "num_classes": self.num_classes,
        }
        return {key: value for key, value in record.items() if value is not None}

    @classmethod
    def from_dict(cls, record, where="run.json"):
        """A `RunRecord` from a `run.json` object (any earlier version)."""
        if record.get("format") != RUN_FORMAT:
            raise ValueError(
                f"{where} is not a {RUN_FORMAT} record. Received format="
                f"{record.get('format')!r}."
            )
        record = dict(record)
        record.pop("format")
        record.pop("num_classes", None)
        names = {f.name for f in dataclasses.fields(cls)} - {
            "columns",
            "training",
            "extra",
        }
        fields = {key: record.pop(key) for key in list(record) if key in names}
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in fields
        )
        if missing:
            raise ValueError(f"{where} lacks {missing}; the run record is damaged.")
        columns = {
            key[: -len("_column")]: record.pop(key)
            for key in list(record)
            if key.endswith("_column")
        }
        training = {key: record.pop(key) for key in TRAINING_KEYS if key in record}
        fields.setdefault("kind", CLASSIFIER_KIND)
        return cls(**fields, columns=columns, training=training, extra=record)

    @classmethod
    def read(cls, directory):
        """The checked `run.json` of a run directory."""
        directory = os.path.abspath(os.fspath(directory))
        path = os.path.join(directory, RUN_FILE)
        return cls.from_dict(read_json(path, "run record (run.json)"), path)

    def write(self, directory):
        """Write `DIR/run.json` atomically."""
        write_json(os.path.join(os.fspath(directory), RUN_FILE), self.to_dict())

    # --- Mapping: read like the run.json dict ----------------------------------

    def __getitem__(self, key):
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self):
        return len(self.to_dict())


# How a run was trained: kept together in `RunRecord.training`, written as
# top-level keys of run.json (as earlier versions did).
TRAINING_KEYS = (
    "seed",
    "epochs",
    "batch_size",
    "learning_rate",
    "dropout",
    "base_dropout",
    "precision",
    "init",
    "reparameterize",
    "truncate_prompt",
)


__all__ = [
    "CAUSAL_LM_KIND",
    "CLASSIFIER_KIND",
    "HEAD_FILE",
    "PROMPT_FILE",
    "RUN_FILE",
    "RUN_FORMAT",
    "RunRecord",
    "TRAINING_KEYS",
    "read_json",
    "write_json",
]
