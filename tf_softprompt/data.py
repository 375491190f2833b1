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
import io
import json
import os
import sys
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


STDIN = "-"


def _text_of(path):
    """The file's text, decoded as UTF-8 (`-`: standard input).

    Raises:
        DataError: for a file that is not UTF-8, naming the line and column.
    """
    if path == STDIN:
        raw = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise _error(
            path,
            line,
            f"byte 0x{raw[e.start]:02x} at column {column} is not UTF-8. Save "
            "the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
        ) from None


def _delimited_rows(path, text, delimiter, columns):
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True
    )
    try:
        header = next(reader)
    except StopIteration:
        raise _error(path, 1, "the file is empty; expected a header row.") from None
    except csv.Error as e:
        raise _error(path, 1, f"the header is not valid: {e}.") from e
    header = [name.strip() for name in header]
    for column in columns:
        if column not in header:
            raise _error(
                path,
                1,
                f"the header has no {column!r} column. Received columns "
                f"{header}. Name the right ones with the --*-column flags "
                "(e.g. --text-column, --label-column) or keyword arguments.",
            )
    index = {column: header.index(column) for column in columns}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
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
        yield line, {column: row[i] for column, i in index.items()}


def _jsonl_rows(path, text, columns):
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            raise _error(path, line, f"not valid JSON ({e.msg}).") from e
        if not isinstance(record, dict):
            raise _error(
                path, line, f"expected a JSON object, found {type(record).__name__}."
            )
        for column in columns:
            if column not in record:
                raise _error(
                    path,
                    line,
                    f"the object has no {column!r} key. Received keys "
                    f"{sorted(record)}.",
                )
        yield line, {column: record[column] for column in columns}


def read_rows(path, columns, file_format=None):
    """`[(line, {column: str})]` of a TSV, CSV or JSONL file, every named
    column present and non-empty.

    Args:
        path: the file, or `"-"` for standard input (JSONL if no format).
        columns: the column names (JSON keys) to read.
        file_format: `"tsv"`, `"csv"` or `"jsonl"`; default from the
            extension.

    Raises:
        DataError: naming the file and line of the first malformed row.
    """
    path = os.fspath(path)
    if file_format is None:
        file_format = "jsonl" if path == STDIN else detect_format(path)
    if path != STDIN and not os.path.isfile(path):
        raise DataError(f"The data file {path!r} does not exist.")
    if file_format not in FORMATS:
        raise DataError(
            f"Unknown data format {file_format!r} for {path!r}. Use one of {FORMATS}."
        )
    text = _text_of(path)
    if file_format == "jsonl":
        rows = _jsonl_rows(path, text, columns)
    else:
        rows = _delimited_rows(
            path, text, "\t" if file_format == "tsv" else ",", columns
        )
    return [
        (line, {c: _check_value(path, line, c, row[c]) for c in columns})
        for line, row in rows
    ]


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
    rows = read_rows(path, (text_column, label_column), file_format)
    if not rows:
        raise DataError(f"{path} holds no examples.")
    return Examples(
        texts=[row[text_column] for _, row in rows],
        labels=[row[label_column].strip() for _, row in rows],
        path=os.fspath(path),
    )


def read_texts(path, text_column=DEFAULT_TEXT_COLUMN):
    """Texts to predict on: a data file's text column, or one text a line.

    A `.tsv`/`.csv`/`.jsonl` file is read by column (labels not needed); any
    other file, and standard input (`"-"`), is read as plain text, one
    example per non-empty line.
    """
    path = os.fspath(path)
    try:
        file_format = None if path == STDIN else detect_format(path)
    except DataError:
        file_format = None
    if file_format is None:
        if path != STDIN and not os.path.isfile(path):
            raise DataError(f"The input file {path!r} does not exist.")
        return [line for line in _text_of(path).splitlines() if line.strip()]
    return [row[text_column] for _, row in read_rows(path, (text_column,))]


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
