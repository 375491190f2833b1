"""Labelled text files: reading, label vocabularies and the embedded default.

A data file holds one example per row with a text column and a label column:

- `.tsv`: tab-separated, a header row naming the columns, no quoting (as GLUE
  ships SST-2);
- `.csv`: comma-separated with a header row and standard CSV quoting;
- `.jsonl`: one JSON object per line.

Every malformed row raises `DataError` naming the file and the 1-based line,
so a broken row in a 100k-line file can be found and fixed.

The embedded default dataset (`default_dataset()`) is a small sentiment set
written for this project and shipped in `tf_softprompt/datasets/`.

Example:
```python
examples = tf_softprompt.data.read_examples("train.tsv", text_column="sentence")
labels = tf_softprompt.data.LabelVocabulary.from_labels(examples.labels)
ids = labels.encode(examples.labels)
```
"""

import csv
import dataclasses
import json
import os
from importlib import resources

FORMATS = ("tsv", "csv", "jsonl")
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"


class DataError(ValueError):
    """A data file that cannot be read; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Examples:
    """Texts and their string labels, read from one file.

    Attributes:
        texts: list of str.
        labels: list of str, one per text.
        path: the file they came from.
    """

    texts: list
    labels: list
    path: str = ""

    def __len__(self):
        return len(self.texts)


def detect_format(path):
    """`"tsv"`, `"csv"` or `"jsonl"` from the file name's extension."""
    extension = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if extension == "json":
        extension = "jsonl"
    if extension not in FORMATS:
        raise DataError(
            f"Cannot tell the format of {os.fspath(path)!r} from its extension "
            f"{extension!r}. Use a .tsv, .csv or .jsonl file, or pass the "
            f"format explicitly (one of {FORMATS})."
        )
    return extension


def _error(path, line, problem):
    return DataError(f"{path}, line {line}: {problem}")


def _check_value(path, line, column, value):
    if value is None:
        raise _error(path, line, f"the {column!r} value is missing.")
    value = str(value)
    if not value.strip():
        raise _error(path, line, f"the {column!r} value is empty.")
    return value


def _read_delimited(path, delimiter, text_column, label_column):
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise _error(path, 1, "the file is empty; expected a header row.") from None
        except csv.Error as e:
            raise _error(path, 1, f"the header is not valid: {e}.") from e
        header = [name.strip() for name in header]
        for column in (text_column, label_column):
            if column not in header:
                raise _error(
                    path,
                    1,
                    f"the header has no {column!r} column. Received columns "
                    f"{header}. Pass --text-column/--label-column (or "
                    "`text_column=`/`label_column=`) to name the right ones.",
                )
        text_index = header.index(text_column)
        label_index = header.index(label_column)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise _error(path, reader.line_num, f"{e}.") from e
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise _error(
                    path,
                    line,
                    f"expected {len(header)} fields ({header}) but found "
                    f"{len(row)}: {row!r}. Check for a stray or missing "
                    f"{'tab' if delimiter == chr(9) else 'comma'}.",
                )
            texts.append(_check_value(path, line, text_column, row[text_index]))
            labels.append(
                _check_value(path, line, label_column, row[label_index]).strip()
            )
    return texts, labels


def _read_jsonl(path, text_column, label_column):
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                raise _error(path, line, f"not valid JSON ({e.msg}).") from e
            if not isinstance(record, dict):
                raise _error(
                    path,
                    line,
                    f"expected a JSON object, found {type(record).__name__}.",
                )
            for column in (text_column, label_column):
                if column not in record:
                    raise _error(
                        path,
                        line,
                        f"the object has no {column!r} key. Received keys "
                        f"{sorted(record)}.",
                    )
            texts.append(_check_value(path, line, text_column, record[text_column]))
            labels.append(
                _check_value(path, line, label_column, record[label_column]).strip()
            )
    return texts, labels


def read_examples(
    path,
    text_column=DEFAULT_TEXT_COLUMN,
    label_column=DEFAULT_LABEL_COLUMN,
    file_format=None,
):
    """Read a TSV, CSV or JSONL file of labelled texts.

    Args:
        path: the file.
        text_column: the column (or JSON key) holding the text.
        label_column: the column (or JSON key) holding the label.
        file_format: `"tsv"`, `"csv"` or `"jsonl"`; inferred from the
            extension when `None`.

    Returns:
        `Examples`.

    Raises:
        DataError: naming the file and line of the first malformed row, or
            the file if it has no examples.
    """
    path = os.fspath(path)
    file_format = file_format or detect_format(path)
    if not os.path.isfile(path):
        raise DataError(f"The data file {path!r} does not exist.")
    if file_format == "jsonl":
        texts, labels = _read_jsonl(path, text_column, label_column)
    elif file_format in ("tsv", "csv"):
        delimiter = "\t" if file_format == "tsv" else ","
        texts, labels = _read_delimited(path, delimiter, text_column, label_column)
    else:
        raise DataError(
            f"Unknown data format {file_format!r} for {path!r}. Use one of {FORMATS}."
        )
    if not texts:
        raise DataError(f"{path} holds no examples.")
    return Examples(texts=texts, labels=labels, path=path)


def read_texts(path, text_column=DEFAULT_TEXT_COLUMN):
    """Texts to predict on: a data file's text column, or one text a line.

    A `.tsv`/`.csv`/`.jsonl` file is read by column (labels not needed); any
    other file is read as plain text, one example per non-empty line.
    """
    path = os.fspath(path)
    try:
        file_format = detect_format(path)
    except DataError:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    if file_format == "jsonl":
        texts = []
        with open(path, encoding="utf-8") as f:
            for line, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise _error(path, line, f"not valid JSON ({e.msg}).") from e
                if not isinstance(record, dict) or text_column not in record:
                    raise _error(path, line, f"no {text_column!r} key.")
                texts.append(_check_value(path, line, text_column, record[text_column]))
        return texts
    delimiter = "\t" if file_format == "tsv" else ","
    quoting = csv.QUOTE_NONE if file_format == "tsv" else csv.QUOTE_MINIMAL
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        if text_column not in (reader.fieldnames or []):
            raise _error(
                path,
                1,
                f"the header has no {text_column!r} column. Received columns "
                f"{reader.fieldnames}.",
            )
        return [
            _check_value(path, reader.line_num, text_column, row[text_column])
            for row in reader
        ]


@dataclasses.dataclass(frozen=True)
class LabelVocabulary:
    """The ordered label names of a classification task.

    Integer-like labels sort numerically (`"2"` after `"10"` would be wrong),
    others alphabetically, so the same data always gives the same ids.
    """

    names: tuple

    @classmethod
    def from_labels(cls, labels):
        unique = set(labels)
        if len(unique) < 2:
            raise DataError(
                f"A classifier needs at least two distinct labels. Received: "
                f"{sorted(unique)}."
            )
        if all(_is_int(name) for name in unique):
            names = sorted(unique, key=int)
        else:
            names = sorted(unique)
        return cls(tuple(names))

    def encode(self, labels, path=""):
        index = {name: i for i, name in enumerate(self.names)}
        ids = []
        for label in labels:
            if label not in index:
                where = f" in {path}" if path else ""
                raise DataError(
                    f"The label {label!r}{where} is not one of the training "
                    f"labels {list(self.names)}."
                )
            ids.append(index[label])
        return ids

    def __len__(self):
        return len(self.names)


def _is_int(text):
    try:
        int(text)
    except ValueError:
        return False
    return True


DEFAULT_DATASET = "sentiment"


def default_dataset():
    """Paths of the embedded default dataset: `(train.tsv, test.tsv)`.

    A small English sentiment set (labels `negative` / `positive`) written
    for this project and shipped as package data; columns `text`, `label`.
    """
    root = resources.files("tf_softprompt") / "datasets"
    train = os.fspath(root / f"{DEFAULT_DATASET}_train.tsv")
    test = os.fspath(root / f"{DEFAULT_DATASET}_test.tsv")
    for path in (train, test):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"The embedded dataset file {path!r} is missing from the "
                "installed package. Reinstall tf-softprompt (package data "
                "`datasets/*.tsv`)."
            )
    return train, test
