"""Data files: formats, errors naming file and line, labels, the embedded set."""

import json

import pytest

from tf_softprompt import data


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_tsv_csv_and_jsonl_read_the_named_columns(tmp_path):
    tsv = write(tmp_path, "a.tsv", "id\tsentence\ty\n1\tgood film\tpos\n2\tbad\tneg\n")
    csv = write(
        tmp_path,
        "a.csv",
        'sentence,y\n"good, really good",pos\n"she said ""bad""",neg\n',
    )
    jsonl = write(
        tmp_path,
        "a.jsonl",
        json.dumps({"sentence": "good film", "y": "pos"})
        + "\n\n"
        + json.dumps({"sentence": "bad", "y": 0, "extra": 1})
        + "\n",
    )
    got = data.read_examples(tsv, "sentence", "y")
    assert (got.texts, got.labels) == (["good film", "bad"], ["pos", "neg"])
    got = data.read_examples(csv, "sentence", "y")
    assert got.texts == ["good, really good", 'she said "bad"']
    got = data.read_examples(jsonl, "sentence", "y")
    assert (got.texts, got.labels) == (["good film", "bad"], ["pos", "0"])


@pytest.mark.parametrize(
    "name, text, line, words",
    [
        ("bad.tsv", "text\tlabel\nok\t1\ntoo\tmany\tfields\nok\t0\n", 3, "fields"),
        ("bad.tsv", "text\tlabel\nok\t1\n\nlonely\n", 4, "expected 2 fields"),
        ("empty.tsv", "text\tlabel\nok\t1\n \t0\n", 3, "'text' value is empty"),
        ("nolabel.csv", "text,label\nok,1\nfine,\n", 3, "'label' value is empty"),
        ("quote.csv", 'text,label\nok,1\n"bad"x,0\n', 3, "line 3"),
        ("cols.tsv", "sentence\tlabel\nok\t1\n", 1, "no 'text' column"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label"\n', 2, "JSON"),
        ("list.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', 2, "JSON object"),
        ("key.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', 2, "'label' key"),
    ],
)
def test_malformed_row_error_names_file_and_line(tmp_path, name, text, line, words):
    path = write(tmp_path, name, text)
    with pytest.raises(data.DataError) as info:
        data.read_examples(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}:"), message
    assert words in message


def test_unknown_extension_and_missing_file_are_explained(tmp_path):
    with pytest.raises(data.DataError, match="Use a .tsv, .csv or .jsonl"):
        data.read_examples(write(tmp_path, "a.txt", "x"))
    with pytest.raises(data.DataError, match="does not exist"):
        data.read_examples(str(tmp_path / "missing.tsv"))
    with pytest.raises(data.DataError, match="holds no examples"):
        data.read_examples(write(tmp_path, "h.tsv", "text\tlabel\n"))


def test_label_vocabulary_orders_integers_numerically_and_rejects_unknowns():
    labels = data.LabelVocabulary.from_labels(["10", "2", "2", "1"])
    assert labels.names == ("1", "2", "10")
    assert labels.encode(["10", "1"]) == [2, 0]
    assert data.LabelVocabulary.from_labels(["pos", "neg"]).names == ("neg", "pos")
    with pytest.raises(data.DataError, match=r"'3' in f.tsv is not one of"):
        labels.encode(["3"], "f.tsv")
    with pytest.raises(data.DataError, match="at least two distinct labels"):
        data.LabelVocabulary.from_labels(["pos", "pos"])


def test_read_texts_reads_a_column_or_plain_lines(tmp_path):
    plain = write(tmp_path, "texts.txt", "first text\n\nsecond, with comma\n")
    assert data.read_texts(plain) == ["first text", "second, with comma"]
    tsv = write(tmp_path, "t.tsv", "id\tbody\n1\thello\n")
    assert data.read_texts(tsv, "body") == ["hello"]


def test_embedded_dataset_is_packaged_balanced_and_disjoint():
    train_path, test_path = data.default_dataset()
    train = data.read_examples(train_path)
    test = data.read_examples(test_path)
    assert (len(train), len(test)) == (224, 74)
    for split in (train, test):
        assert split.labels.count("positive") == split.labels.count("negative")
    assert not set(train.texts) & set(test.texts)
    assert len(set(train.texts)) == len(train.texts)
