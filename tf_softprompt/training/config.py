"""`TrainConfig`: the settings of a prompt-tuning run, declared once.

Each field carries its command-line help in its metadata; the CLI's
`train` flags (`add_arguments`) and the benchmarks' configs
(`from_arguments`) are derived from the dataclass, so a new option is added
in one place.

Example:
```python
parser = argparse.ArgumentParser()
add_arguments(parser)
config = from_arguments(parser.parse_args(["--out", "run", "--method", "prefix"]))
config.task  # "classification"
```
"""

import argparse
import dataclasses

from tf_softprompt import names

INIT_CHOICES = ("uniform", "vocab", "label-words")
PRECISIONS = names.PRECISIONS
CLASSIFICATION, CAUSAL_LM = names.TASKS
SEQUENCE_LENGTH = 128
EMBEDDED_SEQUENCE_LENGTH = 24
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
# Settings that belong to one task only; the other refuses them.
CLASSIFIER_ONLY = ("label_column", "pooling", "dropout")
CAUSAL_LM_ONLY = ("prompt_column", "completion_column", "truncate_prompt")


def _field(default, help, **cli):
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclasses.dataclass
class TrainConfig:
    """Settings of a prompt-tuning run (the CLI's `train` flags).

    Attributes:
        out: output directory.
        task: `"classification"` (a text classifier: prompt and head) or
            `"causal-lm"` (a causal LM's prompt, the loss on completions).
        model: keras-hub preset name or local preset directory; `None` for
            the packaged all-MiniLM-L6-v2 (`tf_softprompt.packaged_model`).
        data: training file (TSV/CSV/JSONL); `None` for the embedded
            default dataset.
        eval_data: held-out file; `None` holds out `validation_split` of
            `data` (the embedded default has its own test file).
        text_column, label_column: column names (JSON keys) in the files;
            for a causal LM, a text column alone means plain language
            modelling (the loss on every token).
        prompt_column, completion_column: a causal LM's prompt/completion
            columns (the loss on the completion and the end token only).
        truncate_prompt: a causal LM: cut prompts from the left where
            prompt plus completion exceed `sequence_length` (else refuse).
        method: the injection method (`tf_softprompt.methods`).
        prompt_length: P, prompt vectors (or prefix positions).
        init: `"uniform"`, `"vocab"` (sampled vocabulary tokens) or
            `"label-words"` (the label names' tokens, topped up with sampled
            ones; classifiers). For a prefix, the keys/values those tokens
            produce. `None`: label-words for classifiers, vocab for causal
            LMs.
        reparameterize: prefix only: the hidden width of Li and Liang's MLP
            reparameterisation, or `None` to train the prefix directly.
        epochs, batch_size, learning_rate: optimisation (Adam).
        sequence_length: T, tokens per text before prompt slots are added
            (a causal LM: prompt, completion and end token); `None`: 24 for
            the embedded dataset, 128 otherwise.
        offset: where forms 1 and 2 put the prompt; `None` is the adapter's
            default (after [CLS] for BERT).
        seed: weights, prompt initialisation, dropout and data order.
        validation_split: fraction held out when `eval_data` is `None`.
        baseline: also train the head without a prompt.
        checkpoint_every: checkpoint every N steps (0: each epoch).
        dropout: the task head's dropout; `None` keeps the task default.
        pooling: the representation the head reads (`classifier.MODES`);
            `None`: the checkpoint's own (`checkpoints.default_pooling`).
        base_dropout: the frozen base's dropout rate; `None` keeps the
            preset's (0 turns it off: faster steps; see the README for what
            it does to accuracy).
        precision: `"float32"`, or `"mixed_bfloat16"` (the frozen base
            computes in bfloat16; prompt and head keep float32 weights; the
            loss is float32).
        jit_compile: compile the train step with XLA.
        recompute: recompute each transformer layer's activations in the
            backward pass: less memory, one more forward pass per step.
    """

    out: str = _field(None, "output directory", required=True)
    task: str = _field(
        CLASSIFICATION,
        "what to train: a text classifier, or a causal LM on prompt/"
        "completion (or text) data",
        choices=names.TASKS,
    )
    model: str = _field(
        None,
        "keras-hub preset name, local preset directory or Hugging Face "
        "checkpoint directory (default for classification: the packaged "
        "all-MiniLM-L6-v2, fetched once without PyTorch)",
    )
    data: str = _field(
        None,
        "training file: .tsv, .csv or .jsonl with text and label columns, or "
        "prompt and completion columns for --task causal-lm (default: the "
        "embedded sentiment dataset)",
    )
    eval_data: str = _field(
        None,
        "held-out file in the same format (default: hold out "
        "--validation-split of --data)",
    )
    text_column: str = _field(
        None,
        "text column (default: text; with --task causal-lm, naming it "
        "trains plain language modelling on it)",
    )
    label_column: str = _field(None, "label column (default: label)")
    prompt_column: str = _field(None, "causal LM: prompt column (default: prompt)")
    completion_column: str = _field(
        None, "causal LM: completion column (default: completion)"
    )
    truncate_prompt: bool = _field(
        False,
        "causal LM: cut prompts from the left where prompt + completion + end "
        "token exceed --sequence-length (default: refuse such rows)",
    )
    method: str = _field(
        "prefix",
        "injection method: prefix (per-layer keys/values; the default, the "
        "best measured), embedding (virtual-id rows), prepend (vectors "
        "replacing the position sum) or past_prefix (a prefix the text follows "
        "in position, as PEFT's PREFIX_TUNING)",
        choices=names.METHODS,
    )
    prompt_length: int = _field(20, "prompt vectors (or prefix positions) P")
    init: str = _field(
        None,
        "prompt initialisation; label-words uses the label names (default: "
        "label-words for classifiers, vocab for causal LMs)",
        choices=INIT_CHOICES,
    )
    reparameterize: int = _field(
        None, "prefix only: train through an MLP of this hidden width"
    )
    epochs: int = _field(12, "epochs")
    batch_size: int = _field(16, "global batch size, over all replicas")
    learning_rate: float = _field(0.01, "Adam's learning rate, prompt and head")
    sequence_length: int = _field(
        None,
        "tokens per text, before prompt slots are added (default: 128, or "
        "24 for the embedded dataset)",
    )
    offset: int = _field(
        None, "prompt position (default: the adapter's; after [CLS] for BERT)"
    )
    seed: int = _field(0, "weights, prompt, dropout and data order")
    validation_split: float = _field(
        0.2, "held-out fraction of --data without --eval-data"
    )
    baseline: bool = _field(True, "also train the head without a prompt")
    checkpoint_every: int = _field(0, "also checkpoint every N steps (0: each epoch)")
    dropout: float = _field(None, "the task head's dropout (default: the task's)")
    pooling: str = _field(
        None,
        "the representation the head reads: mean, cls, max (over the text's "
        "tokens) or pooler (BERT's pooler over [CLS]) (default: the "
        "checkpoint's own: mean for sentence-transformers models such as the "
        "packaged MiniLM, else pooler)",
        choices=names.POOLINGS,
    )
    base_dropout: float = _field(
        None, "the frozen base's dropout (default: the preset's; 0 turns it off)"
    )
    precision: str = _field(
        "float32",
        "compute precision of the frozen base (prompt and head keep float32 weights)",
        choices=PRECISIONS,
    )
    jit_compile: bool = _field(
        False, "compile the train step with XLA (for TPU/GPU; slow on CPU)"
    )
    recompute: bool = _field(
        False,
        "recompute transformer activations in the backward pass: less memory, "
        "about one more forward pass per step, the same gradients",
    )

    def __post_init__(self):
        if self.task not in names.TASKS:
            raise ValueError(
                f"Unknown task {self.task!r}. Use one of {list(names.TASKS)}."
            )
        if self.method not in names.METHODS:
            raise ValueError(
                f"Unknown method {self.method!r}. Use one of {list(names.METHODS)}."
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"Unknown precision {self.precision!r}. Use one of {list(PRECISIONS)}."
            )
        if self.task == CLASSIFICATION:
            self._classification_defaults()
        else:
            self._causal_lm_defaults()
        if self.init not in INIT_CHOICES:
            raise ValueError(
                f"Unknown init {self.init!r}. Use one of {list(INIT_CHOICES)}."
            )
        if self.sequence_length is None:
            self.sequence_length = (
                EMBEDDED_SEQUENCE_LENGTH if self.data is None else SEQUENCE_LENGTH
            )
        for name in ("prompt_length", "epochs", "batch_size", "sequence_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: {value!r}."
                )
        if self.reparameterize is not None:
            if self.method not in ("prefix", "past_prefix"):
                raise ValueError(
                    "`reparameterize` is for method='prefix' (or 'past_prefix'). "
                    f"Received it with method={self.method!r}."
                )
            if not isinstance(self.reparameterize, int) or self.reparameterize <= 0:
                raise ValueError(
                    "`reparameterize` must be a positive integer (the MLP width). "
                    f"Received: {self.reparameterize!r}."
                )
        if not self.learning_rate > 0:
            raise ValueError(
                f"`learning_rate` must be positive. Received: {self.learning_rate}."
            )
        if not 0 < self.validation_split < 1:
            raise ValueError(
                "`validation_split` must be in (0, 1). Received: "
                f"{self.validation_split}."
            )
        for name in ("dropout", "base_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(
                    f"`{name}` must be in [0, 1). Received: {name}={value}."
                )

    def _refuse(self, fields, task):
        given = [f for f in fields if getattr(self, f) not in (None, False)]
        if given:
            flags = ", ".join(_flag(f) for f in given)
            raise ValueError(
                f"{flags} {'is' if len(given) == 1 else 'are'} not for --task "
                f"{task}. Remove {'it' if len(given) == 1 else 'them'}."
            )

    def _classification_defaults(self):
        self._refuse(CAUSAL_LM_ONLY, CLASSIFICATION)
        self.text_column = self.text_column or DEFAULT_TEXT_COLUMN
        self.label_column = self.label_column or DEFAULT_LABEL_COLUMN
        self.init = self.init or "label-words"

    def _causal_lm_defaults(self):
        self._refuse(CLASSIFIER_ONLY, CAUSAL_LM)
        if self.model is None:
            raise ValueError(
                "--task causal-lm needs --model: a GPT-2, Llama or Gemma keras-hub "
                "preset or Hugging Face checkpoint directory."
            )
        if self.data is None:
            raise ValueError(
                "--task causal-lm needs --data FILE: .jsonl, .csv or .tsv with "
                "prompt and completion columns (or --text-column for plain text)."
            )
        if self.text_column is not None:
            if self.prompt_column or self.completion_column:
                raise ValueError(
                    "--text-column (plain language modelling) and --prompt-column/"
                    "--completion-column exclude each other. Pass one or the other."
                )
            if self.truncate_prompt:
                raise ValueError(
                    "--truncate-prompt is for prompt/completion data; with "
                    "--text-column, texts are cut to --sequence-length."
                )
        else:
            self.prompt_column = self.prompt_column or "prompt"
            self.completion_column = self.completion_column or "completion"
        self.init = self.init or "vocab"
        if self.init == "label-words":
            raise ValueError(
                "--init label-words needs class labels; a causal LM has none. "
                "Use --init vocab or --init uniform."
            )

    @property
    def plain_text(self):
        """A causal LM trained on a text column alone (loss on every token)."""
        return self.task == CAUSAL_LM and self.text_column is not None

    def settings(self):
        """The fields that change what is trained (checked on resume).

        `epochs` is not among them: a finished run continues to more epochs.
        """
        excluded = (
            "out",
            "baseline",
            "checkpoint_every",
            "jit_compile",
            "recompute",
            "epochs",
        )
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in excluded}


# The name the classifier-only versions used.
ClassifierConfig = TrainConfig


def _flag(name):
    return "--" + name.replace("_", "-")


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


_TYPES = {
    "int": positive_int,
    "float": float,
    "str": str,
}
# Flags whose values may be zero or negative (parsed as plain ints).
_ANY_INT = ("offset", "seed", "checkpoint_every")


def add_arguments(parser, exclude=()):
    """Add one flag per `TrainConfig` field to an argparse parser.

    A bool field defaulting to False becomes `--name`; one defaulting to
    True becomes `--no-name`. Help texts show the defaults.

    Args:
        parser: an `argparse.ArgumentParser` (or subparser).
        exclude: field names to leave out.
    """
    for field in dataclasses.fields(TrainConfig):
        if field.name in exclude:
            continue
        meta = dict(field.metadata)
        help_text = meta.pop("help")
        if field.type in (bool, "bool"):
            if field.default:
                parser.add_argument(
                    "--no-" + field.name.replace("_", "-"),
                    dest=field.name,
                    action="store_false",
                    help=f"do not: {help_text}",
                )
            else:
                parser.add_argument(
                    _flag(field.name), action="store_true", help=help_text
                )
            continue
        type_name = field.type if isinstance(field.type, str) else field.type.__name__
        kind = int if field.name in _ANY_INT else _TYPES[type_name]
        if field.default is not None:
            help_text += " (default: %(default)s)"
        parser.add_argument(
            _flag(field.name),
            type=kind,
            default=field.default,
            help=help_text,
            **meta,
        )


def from_arguments(args, **overrides):
    """A `TrainConfig` from parsed arguments (`add_arguments`' flags)."""
    values = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TrainConfig)
        if hasattr(args, field.name)
    }
    values.update(overrides)
    return TrainConfig(**values)
