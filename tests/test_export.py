"""The classifier exporter, checked the way TF Serving loads models.

Small models are exported once per module: Keras 3 and tf-keras models
built with `PromptEmbedding` and `PromptPrepend` (single and multi-task),
and keras-hub `BertTextClassifier`s with prompt tuning and prefix tuning
(single, and multi-task with per-task heads, labels, text lengths and an
ensemble). Every signature of every export then runs in ONE fresh process
through the TF1 session loader and in ONE process of `serving/c_loader.c`
built against the wheel's C API.

Every answer is compared with a reference computed without the exporter:
the Keras model of each task on its own (one prompt, its own length, its
own head), fed token ids tokenised here by hand (`_word_ids`) or by the
keras-hub preprocessor, never by `TextEncoder`. Neither loader checks the
inputs against the SignatureDef (TF Serving does not), so every error below
comes from the SavedModel itself or from the TF runtime.
"""

import os
import shutil
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from saved_weights import assert_each_weight_once

from tf_softprompt import (
    PrefixAttention,
    PromptEmbedding,
    PromptPrepend,
    artifact,
    hub,
    keras2,
)
from tf_softprompt.export import (
    TPU_ALIAS,
    MultiTaskPromptTable,
    TextEncoder,
    export_model,
    read_info,
    read_warmup_requests,
)
from tf_softprompt.serving import loaders

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a good bad movie film great awful plot acting was is not very".split()
)
V, H = len(WORDS), 16
SEQUENCE_LENGTH = 16
PMAX = 4
TEXT_POSITIONS = SEQUENCE_LENGTH - PMAX  # 12, of which 10 are text tokens
LABELS = ["negative", "neutral", "positive"]
IMDB_LABELS = ["bad", "good"]  # the prefix export's imdb head has 2 classes
TASK_LENGTHS = {"sst": 4, "imdb": 2, "news": 3}
SHORT_LENGTHS = {"sst": 3, "imdb": 1, "news": 2}  # prepend and prefix exports
IMDB_TEXT_POSITIONS = 10  # the prefix export's imdb task reads 8 text tokens
TEXTS = [
    "the good movie",
    "",
    # 20 tokens: truncated to 10 (11 for PromptPrepend, 8 for the prefix
    # export's imdb task, 14 for its other tasks).
    "awful plot " * 4 + "great acting the good film was not very bad movie a plot",
    "not very good acting",
    "a film",
    "great great",
]
TASKS = ["sst", "imdb", "news", "news", "sst", "imdb"]
MULTI = [
    "multi",
    "prepend_multi",
    "k2_prepend_multi",
    "prefix_multi",
    "k3_prefix_multi",
    "k2_prefix_multi",
]
EXPORTS = [
    "multi",
    "single",
    "prepend",
    "prepend_multi",
    "k2",
    "k2_prepend_multi",
    "hub",
    "prefix",
    "prefix_multi",
    "k3_prefix",
    "k3_prefix_multi",
    "k2_prefix_multi",
]
LOADERS = ["session", "c_api"]


def _tokenizer():
    return keras_hub.models.BertTokenizer(vocabulary=WORDS)


def _word_ids(text):
    """Reference tokenisation: a word is its vocabulary id, else [UNK]."""
    return [WORDS.index(w) if w in WORDS else 1 for w in text.lower().split()]


def _text_row(text, positions):
    """[CLS] text [SEP] in `positions` slots, built without the exporter."""
    return [2] + _word_ids(text)[: positions - 2] + [3]


def _token_inputs(texts, positions):
    """`predict_tokens` inputs tokenised by hand, padded to `positions`."""
    ids = np.zeros((len(texts), positions), np.int32)
    for i, text in enumerate(texts):
        row = _text_row(text, positions)
        ids[i, : len(row)] = row
    mask = np.zeros_like(ids)
    for i, text in enumerate(texts):
        mask[i, : len(_text_row(text, positions))] = 1
    return {"token_ids": ids, "padding_mask": mask}


def _softmax(x):
    return tf.nn.softmax(np.asarray(x, np.float32)).numpy()


def _pad_classes(p):
    p = np.asarray(p, np.float32)
    return np.pad(p, [(0, 0), (0, len(LABELS) - p.shape[-1])])


class _K3Base:
    """Shared layers of a tiny Keras 3 encoder classifier."""

    def __init__(self, seed):
        keras.utils.set_random_seed(seed)
        self.embedding = keras.layers.Embedding(V, H)
        self.embedding.build((None, None))
        self.positions = keras_hub.layers.PositionEmbedding(32)
        self.encoder = keras_hub.layers.TransformerEncoder(32, 2)
        self.head = keras.layers.Dense(len(LABELS))

    def model(self, num_prompt_tokens, prompt=None):
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
        layer = PromptEmbedding.from_embedding(self.embedding, num_prompt_tokens)
        x = layer(token_ids)
        x = x + self.positions(x)
        x = self.encoder(x, padding_mask=padding_mask)
        model = keras.Model(
            {"token_ids": token_ids, "padding_mask": padding_mask},
            self.head(x[:, 0]),
        )
        if prompt is not None:
            layer.prompt.assign(prompt)
        return model, layer


def _k2_model(num_prompt_tokens):
    """A tiny tf-keras classifier: masked mean of prompted embeddings."""
    tf_keras.utils.set_random_seed(3)
    token_ids = tf_keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = tf_keras.Input((None,), dtype="int32", name="padding_mask")
    layer = keras2.PromptEmbedding(num_prompt_tokens, input_dim=V, output_dim=H)
    x = layer(token_ids)
    weights = tf_keras.layers.Lambda(lambda m: tf.cast(m, "float32")[..., None])(
        padding_mask
    )
    pooled = tf_keras.layers.Lambda(
        lambda a: tf.reduce_sum(a[0] * a[1], 1) / tf.reduce_sum(a[1], 1)
    )([x, weights])
    outputs = tf_keras.layers.Dense(len(LABELS))(pooled)
    return tf_keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask}, outputs
    ), layer


def _k3_prepend_model():
    """Keras 3 model with `PromptPrepend` after the embedding (single task)."""
    keras.utils.set_random_seed(5)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(V, H, mask_zero=True)(token_ids)
    x = PromptPrepend(3, offset=1)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(token_ids, keras.layers.Dense(len(LABELS))(x))


class _K3AddPositions(keras.layers.Layer):
    """Adds a learned vector per position (after the prompt); keeps the mask."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table", shape=(32, input_shape[-1]), initializer="random_normal"
        )

    def call(self, x):
        return x + self.table[None, : tf.shape(x)[1]]


class _K2AddPositions(tf_keras.layers.Layer):
    """The tf-keras twin of `_K3AddPositions`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table", shape=(32, input_shape[-1]), initializer="random_normal"
        )

    def call(self, x):
        return x + self.table[None, : tf.shape(x)[1]]


class _PrependBase:
    """Shared layers of a position-aware `PromptPrepend` classifier.

    Positions are added after the prompt, so the text's positions depend
    on where the prompt ends (a padded prompt slot left in place would move
    the text), and the masked average reads the mask (an unmasked padded
    slot would change it).
    """

    def __init__(self, flavour, seed):
        self.k = keras if flavour == "k3" else tf_keras
        self.prepend = PromptPrepend if flavour == "k3" else keras2.PromptPrepend
        self.k.utils.set_random_seed(seed)
        self.embedding = self.k.layers.Embedding(V, H, mask_zero=True)
        self.embedding.build((None, None))
        self.positions = (_K3AddPositions if flavour == "k3" else _K2AddPositions)(
            name="add_positions"
        )
        self.head = self.k.layers.Dense(len(LABELS))

    def model(self, num_prompt_tokens, prompt=None):
        token_ids = self.k.Input((None,), dtype="int32", name="token_ids")
        x = self.embedding(token_ids)
        layer = self.prepend(num_prompt_tokens, offset=1)
        x = self.positions(layer(x))
        x = self.k.layers.GlobalAveragePooling1D()(x)
        model = self.k.Model(token_ids, self.head(x))
        if prompt is not None:
            layer.prompt.assign(prompt)
        return model, layer


class _PrefixBase:
    """Shared layers of a core-layer `PrefixAttention` classifier: a frozen
    embedding, one prefixed self-attention under the padding mask, a masked
    mean and a dense head (Keras 3 or tf-keras)."""

    def __init__(self, flavour, seed):
        self.flavour = flavour
        self.k = keras if flavour == "k3" else tf_keras
        self.prefix = PrefixAttention if flavour == "k3" else keras2.PrefixAttention
        self.k.utils.set_random_seed(seed)
        self.embedding = self.k.layers.Embedding(V, H, trainable=False)
        self.embedding.build((None, None))
        self.attention = self.k.layers.MultiHeadAttention(num_heads=2, key_dim=H // 2)
        self.head = self.k.layers.Dense(len(LABELS))

    def _lambda(self, fn):
        return self.k.layers.Lambda(fn)

    def model(self, num_prompt_tokens, prefix=None):
        token_ids = self.k.Input((None,), dtype="int32", name="token_ids")
        padding_mask = self.k.Input((None,), dtype="int32", name="padding_mask")
        x = self.embedding(token_ids)
        if self.flavour == "k3":
            ops = keras.ops
            mask = self._lambda(
                lambda m: ops.logical_and(
                    ops.cast(m, "bool")[:, :, None], ops.cast(m, "bool")[:, None, :]
                )
            )(padding_mask)
            mean = self._lambda(
                lambda a: (
                    ops.sum(a[0] * ops.cast(a[1], a[0].dtype)[..., None], 1)
                    / ops.sum(ops.cast(a[1], a[0].dtype), 1, keepdims=True)
                )
            )
        else:
            mask = self._lambda(
                lambda m: tf.logical_and(
                    tf.cast(m, tf.bool)[:, :, None], tf.cast(m, tf.bool)[:, None, :]
                )
            )(padding_mask)
            mean = self._lambda(
                lambda a: (
                    tf.reduce_sum(a[0] * tf.cast(a[1], a[0].dtype)[..., None], 1)
                    / tf.reduce_sum(tf.cast(a[1], a[0].dtype), 1, keepdims=True)
                )
            )
        layer = self.prefix(num_prompt_tokens, self.attention)
        y = layer(x, x, attention_mask=mask)
        outputs = self.head(mean([y, padding_mask]))
        model = self.k.Model(
            {"token_ids": token_ids, "padding_mask": padding_mask}, outputs
        )
        if prefix is not None:
            layer.prefix.assign(prefix)
        return model, layer


def _bert_classifier(num_classes, method=None, length=None, prompt=None, head=None):
    """The tiny BERT classifier (same backbone weights every call)."""
    keras.utils.set_random_seed(7)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=V,
        num_layers=1,
        num_heads=2,
        hidden_dim=H,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    classifier = keras_hub.models.BertTextClassifier(
        backbone, num_classes=num_classes, preprocessor=None
    )
    handle = None
    if method is not None:
        handle = hub.enable_prompt_tuning(classifier, length, method=method)
        handle.assign_prompt(prompt)
    if head is not None:
        classifier.output_dense.kernel.assign(head[0])
        classifier.output_dense.bias.assign(head[1])
    return classifier, handle


def _hub_reference(classifier, sequence_length):
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        _tokenizer(), sequence_length=sequence_length
    )

    def probabilities(texts):
        features = preprocessor(tf.constant(list(texts)))
        return _pad_classes(_softmax(classifier(features)))

    return probabilities


def _per_text(fn):
    """`(texts, tasks) -> [N, C]` from `(text, task) -> [C]`."""
    return lambda texts, tasks: np.stack([fn(x, t) for x, t in zip(texts, tasks)])


def _by_task(references):
    """`(texts, tasks) -> [N, C]` from `{task: texts -> [n, C]}`."""

    def reference(texts, tasks):
        out = np.zeros((len(texts), len(LABELS)), np.float32)
        for task in set(tasks):
            rows = [i for i, t in enumerate(tasks) if t == task]
            out[rows] = references[task]([texts[i] for i in rows])
        return out

    return reference


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Export every model once; `{name: spec}` with each export's reference.

    A spec: `dir`, `served` (the names a `task` input takes, `None` for a
    single task), `reference(texts, tasks) -> [N, C]`, `labels` (per served
    name) and `positions` (`predict_tokens`' T).
    """
    root = tmp_path_factory.mktemp("exports")
    tokenizer = _tokenizer()
    rng = np.random.default_rng(0)
    specs = {}

    def add(name, directory, served, reference, positions, labels=None):
        labels = labels or {}
        specs[name] = {
            "dir": directory,
            "served": served,
            "reference": reference,
            "positions": positions,
            "labels": lambda task: labels.get(task, LABELS),
        }

    # Keras 3 PromptEmbedding, multi-task: prompts of lengths 4, 2, 3.
    base = _K3Base(seed=1)
    prompts, artifacts, per_task = {}, {}, {}
    for task, length in TASK_LENGTHS.items():
        prompts[task] = rng.normal(0, 0.5, (length, H)).astype(np.float32)
        per_task[task], layer = base.model(length, prompts[task])
        artifacts[task] = str(root / f"{task}.prompt.npz")
        layer.save_prompt(artifacts[task], task=task)

    def embedding_reference(text, task):
        length = TASK_LENGTHS[task]
        row = [2] + list(range(V, V + length)) + _word_ids(text)[:10] + [3]
        ids = np.array([row], np.int32)
        logits = per_task[task]({"token_ids": ids, "padding_mask": np.ones_like(ids)})
        return _softmax(logits)[0]

    model, _ = base.model(4, prompts["sst"])
    add(
        "multi",
        export_model(
            model,
            root / "multi",
            1,
            tokenizer=tokenizer,
            sequence_length=SEQUENCE_LENGTH,
            labels=LABELS,
            prompts=[artifacts[t] for t in TASK_LENGTHS],
            offset=1,  # after [CLS]; PromptEmbedding artifacts record offset 0
        ),
        list(TASK_LENGTHS),
        _per_text(embedding_reference),
        TEXT_POSITIONS,
    )
    add(
        "single",
        export_model(
            model,
            root / "single",
            1,
            tokenizer=tokenizer,
            sequence_length=SEQUENCE_LENGTH,
            labels=LABELS,
            task="sst",
        ),
        None,
        _per_text(lambda text, task: embedding_reference(text, "sst")),
        TEXT_POSITIONS,
    )
    specs["multi"]["base"], specs["multi"]["artifacts"] = base, artifacts
    specs["multi"]["prompts"] = prompts

    # Keras 3 PromptPrepend, single task (P=3: 13 text positions).
    prepend = _k3_prepend_model()
    add(
        "prepend",
        export_model(
            prepend,
            root / "prepend",
            1,
            tokenizer=tokenizer,
            sequence_length=SEQUENCE_LENGTH,
            labels=LABELS,
        ),
        None,
        _per_text(
            lambda text, task: _softmax(prepend(np.array([_text_row(text, 13)])))[0]
        ),
        SEQUENCE_LENGTH - 3,
    )

    # PromptPrepend multi-task, both flavours: prompts of lengths 3, 1, 2.
    for name, flavour in (("prepend_multi", "k3"), ("k2_prepend_multi", "k2")):
        shared = _PrependBase(flavour, seed=9)
        vocabulary = np.asarray(shared.embedding.embeddings)
        models, paths = {}, {}
        for task, length in SHORT_LENGTHS.items():
            values = rng.normal(0, 0.5, (length, H)).astype(np.float32)
            models[task], layer = shared.model(length, values)
            paths[task] = str(root / f"{name}-{task}.prompt.npz")
            layer.save_prompt(paths[task], vocabulary, task=task)

        def prepend_reference(text, task, models=models):
            return _softmax(models[task](np.array([_text_row(text, 13)])))[0]

        exported, _ = shared.model(3)
        add(
            name,
            export_model(
                exported,
                root / name,
                1,
                tokenizer=tokenizer,
                sequence_length=SEQUENCE_LENGTH,
                labels=LABELS,
                prompts=paths,
                vocabulary=vocabulary,
            ),
            list(SHORT_LENGTHS),
            _per_text(prepend_reference),
            SEQUENCE_LENGTH - 3,
        )

    # Keras 2 (tf-keras) PromptEmbedding, single task.
    k2, layer = _k2_model(PMAX)
    layer.prompt.assign(rng.normal(0, 0.5, (PMAX, H)).astype(np.float32))

    def k2_reference(text, task):
        ids = np.array([[2, *range(V, V + PMAX), *_word_ids(text)[:10], 3]])
        return _softmax(k2({"token_ids": ids, "padding_mask": np.ones_like(ids)}))[0]

    add(
        "k2",
        export_model(
            k2,
            root / "k2",
            1,
            tokenizer=tokenizer,
            sequence_length=SEQUENCE_LENGTH,
            labels=LABELS,
        ),
        None,
        _per_text(k2_reference),
        TEXT_POSITIONS,
    )
    specs["k2"]["model"] = k2

    # keras-hub BertTextClassifier with prompt tuning (tf_softprompt.hub).
    classifier, _ = _bert_classifier(
        3, "embedding", PMAX, rng.normal(0, 0.5, (PMAX, H)).astype(np.float32)
    )
    reference = _hub_reference(classifier, TEXT_POSITIONS)
    add(
        "hub",
        export_model(
            classifier,
            root / "hub",
            1,
            tokenizer=tokenizer,
            sequence_length=SEQUENCE_LENGTH,
            labels=LABELS,
        ),
        None,
        lambda texts, tasks, reference=reference: reference(texts),
        TEXT_POSITIONS,
    )

    # Prefix tuning (no sequence positions: all 16 are text), single task.
    shape = (1, 2, 3, 2, H // 2)  # [layers, k/v, P, kv heads, head dim]
    classifier, _ = _bert_classifier(
        3, "prefix", 3, rng.normal(0, 1, shape).astype(np.float32)
    )
    reference = _hub_reference(classifier, SEQUENCE_LENGTH)
    add(
        "prefix",
        export_model(
            classifier,
            root / "prefix",
            1,
            tokenizer=tokenizer,
            sequence_length=SEQUENCE_LENGTH,
            labels=LABELS,
        ),
        None,
        lambda texts, tasks, reference=reference: reference(texts),
        SEQUENCE_LENGTH,
    )

    # Prefix multi-task from artifacts of lengths 3, 1, 2, each task with its
    # own head (imdb: 2 classes, its own labels), imdb reading 10 positions,
    # and "vote", an ensemble of sst and news.
    heads, paths, references, members = {}, {}, {}, {}
    for task, length in SHORT_LENGTHS.items():
        classes = len(IMDB_LABELS) if task == "imdb" else len(LABELS)
        heads[task] = (
            rng.normal(0, 1, (H, classes)).astype(np.float32),
            rng.normal(0, 1, (classes,)).astype(np.float32),
        )
        values = rng.normal(0, 1, (1, 2, length, 2, H // 2)).astype(np.float32)
        members[task], handle = _bert_classifier(
            classes, "prefix", length, values, heads[task]
        )
        paths[task] = str(root / f"prefix-{task}.prompt.npz")
        handle.save_prompt(paths[task], task=task)
        positions = IMDB_TEXT_POSITIONS if task == "imdb" else SEQUENCE_LENGTH
        references[task] = _hub_reference(members[task], positions)
    references["vote"] = lambda texts: (
        (references["sst"](texts) + references["news"](texts)) / 2
    )
    specs["references"], specs["members"] = references, members
    add(
        "prefix_multi",
        export_model(
            _bert_classifier(3)[0],
            root / "prefix_multi",
            1,
            tokenizer=tokenizer,
            sequence_length=SEQUENCE_LENGTH,
            labels={"sst": LABELS, "imdb": IMDB_LABELS, "news": LABELS},
            prompts=paths,
            heads=heads,
            ensembles={"vote": ["sst", "news"]},
            text_lengths={"imdb": IMDB_TEXT_POSITIONS},
        ),
        [*SHORT_LENGTHS, "vote"],
        _by_task(references),
        SEQUENCE_LENGTH,
        labels={"imdb": IMDB_LABELS},
    )
    # Core-layer PrefixAttention (Keras 3 single and multi-task, tf-keras
    # multi-task): prefixes of lengths 3, 1, 2 in one padded table.
    for name, flavour in (("k3_prefix_multi", "k3"), ("k2_prefix_multi", "k2")):
        shared = _PrefixBase(flavour, seed=11)
        models, paths = {}, {}
        for task, length in SHORT_LENGTHS.items():
            values = rng.normal(0, 1, (2, length, 2, H // 2)).astype(np.float32)
            models[task], layer = shared.model(length, values)
            paths[task] = str(root / f"{name}-{task}.prompt.npz")
            layer.save_prompt(paths[task], task=task)

        def prefix_reference(text, task, models=models):
            ids = np.array([_text_row(text, SEQUENCE_LENGTH)], np.int32)
            inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
            return _softmax(models[task](inputs))[0]

        exported, _ = shared.model(3)
        add(
            name,
            export_model(
                exported,
                root / name,
                1,
                tokenizer=tokenizer,
                sequence_length=SEQUENCE_LENGTH,
                labels=LABELS,
                prompts=paths,
            ),
            list(SHORT_LENGTHS),
            _per_text(prefix_reference),
            SEQUENCE_LENGTH,
        )
        if flavour == "k3":
            single, _ = shared.model(3, rng.normal(0, 1, (2, 3, 2, H // 2)))

            def single_reference(text, task, single=single):
                ids = np.array([_text_row(text, SEQUENCE_LENGTH)], np.int32)
                inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
                return _softmax(single(inputs))[0]

            add(
                "k3_prefix",
                export_model(
                    single,
                    root / "k3_prefix",
                    1,
                    tokenizer=tokenizer,
                    sequence_length=SEQUENCE_LENGTH,
                    labels=LABELS,
                ),
                None,
                _per_text(single_reference),
                SEQUENCE_LENGTH,
            )
    return specs


def _mixed_tasks(spec):
    if spec["served"] is None:
        return None
    if spec["served"] == list(TASK_LENGTHS):
        return list(TASKS)
    return [spec["served"][i % len(spec["served"])] for i in range(len(TEXTS))]


def _strings(values):
    return np.array([v.encode() for v in values], dtype=object)


def _job(spec, signature, inputs, texts=None, tasks=None):
    return {
        "export_dir": spec["dir"],
        "signature": signature,
        "inputs": inputs,
        "texts": texts,
        "tasks": tasks,
    }


def _jobs(setup):
    """Every signature of every export (plus bad requests) as loader jobs,
    each with the texts and tasks its answer is checked against."""
    jobs = {}
    for name in EXPORTS:
        spec = setup[name]
        tasks = _mixed_tasks(spec)
        text = {"text": _strings(TEXTS)}
        tokens = _token_inputs(TEXTS, spec["positions"])
        if tasks is not None:
            text["task"] = _strings(tasks)
            tokens["task_id"] = np.array(
                [spec["served"].index(t) for t in tasks], np.int32
            )
            for task in spec["served"]:  # the same texts, one task per batch
                jobs[f"{name}/only-{task}"] = _job(
                    spec,
                    "serving_default",
                    {"text": _strings(TEXTS), "task": _strings([task] * len(TEXTS))},
                    TEXTS,
                    [task] * len(TEXTS),
                )
        jobs[f"{name}/text"] = _job(spec, "serving_default", text, TEXTS, tasks)
        jobs[f"{name}/tokens"] = _job(spec, "predict_tokens", tokens, TEXTS, tasks)
        records = read_warmup_requests(spec["dir"])
        default = [
            r for r in records if r.model_spec.signature_name != "predict_tokens"
        ]
        texts = [t.decode() for t in tf.make_ndarray(default[0].inputs["text"])]
        warmup_tasks = None
        if "task" in default[0].inputs:
            warmup_tasks = [
                t.decode() for t in tf.make_ndarray(default[0].inputs["task"])
            ]
        for i, request in enumerate(records):
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            signature = request.model_spec.signature_name
            jobs[f"{name}/warmup{i}"] = _job(
                spec, signature, inputs, texts, warmup_tasks
            )
    multi = setup["multi"]
    tokens = jobs["multi/tokens"]["inputs"]
    bad = {
        "unknown-task": (
            multi,
            "serving_default",
            {"text": _strings(["good", "bad"]), "task": _strings(["sst", "weather"])},
        ),
        "unknown-ensemble": (
            setup["prefix_multi"],
            "serving_default",
            {"text": _strings(["good"]), "task": _strings(["poll"])},
        ),
        "float-ids": (
            multi,
            "predict_tokens",
            {**tokens, "token_ids": tokens["token_ids"].astype(np.float32)},
        ),
        "long-ids": (
            multi,
            "predict_tokens",
            {
                **tokens,
                "token_ids": np.pad(tokens["token_ids"], [(0, 0), (0, 1)]),
                "padding_mask": np.pad(tokens["padding_mask"], [(0, 0), (0, 1)]),
            },
        ),
        "short-task-ids": (
            multi,
            "predict_tokens",
            {**tokens, "task_id": tokens["task_id"][:2]},
        ),
        "bad-task-id": (
            multi,
            "predict_tokens",
            {**tokens, "task_id": tokens["task_id"] + 5},
        ),
    }
    for label, (spec, signature, inputs) in bad.items():
        jobs[f"bad/{label}"] = _job(spec, signature, inputs)
    # After the bad requests: the process is still up and serving.
    jobs["multi/after-bad"] = dict(jobs["multi/text"])
    return jobs


@pytest.fixture(scope="module")
def results(setup, tmp_path_factory):
    """`{loader: {label: result}}` for the session loader and the C API."""
    jobs = _jobs(setup)
    setup["jobs"] = jobs
    labels = list(jobs)
    job_list = [
        {k: job[k] for k in ("export_dir", "signature", "inputs")}
        for job in jobs.values()
    ]
    binary = loaders.build_c_loader(str(tmp_path_factory.mktemp("c") / "c_loader"))
    return {
        **{
            loader: dict(zip(labels, results))
            for loader, results in loaders.run_both_loaders(job_list, binary).items()
        },
    }


def _outputs(result):
    assert "outputs" in result, result
    return result["outputs"]


def _export_jobs(setup, name, signature):
    return {
        label: job
        for label, job in setup["jobs"].items()
        if label.startswith(f"{name}/")
        and job["signature"] == signature
        and label != "multi/after-bad"
    }


def _check_answers(setup, name, label, job, outputs):
    spec = setup[name]
    tasks = job["tasks"] or [None] * len(job["texts"])
    expected = spec["reference"](job["texts"], tasks)
    np.testing.assert_allclose(
        outputs["probabilities"], expected, atol=1e-5, err_msg=label
    )
    np.testing.assert_array_equal(outputs["label_ids"], expected.argmax(-1), label)
    return expected, tasks


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", EXPORTS)
def test_serving_default_matches_the_reference(results, setup, loader, name):
    jobs = _export_jobs(setup, name, "serving_default")
    assert len(jobs) >= 2  # the request and the warmup record
    for label, job in jobs.items():
        outputs = _outputs(results[loader][label])
        expected, tasks = _check_answers(setup, name, label, job, outputs)
        names = [
            setup[name]["labels"](task)[i].encode()
            for task, i in zip(tasks, expected.argmax(-1))
        ]
        assert list(outputs["label_names"]) == names, label


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", EXPORTS)
def test_predict_tokens_matches_the_reference_with_numbers_only(
    results, setup, loader, name
):
    jobs = _export_jobs(setup, name, "predict_tokens")
    assert len(jobs) == 2  # hand-tokenised inputs and the warmup record
    for label, job in jobs.items():
        outputs = _outputs(results[loader][label])
        assert set(outputs) == {"probabilities", "label_ids", "num_classes"}, label
        for key, value in outputs.items():
            assert value.dtype.kind in "fiu", (label, key, value.dtype)
        _check_answers(setup, name, label, job, outputs)


@pytest.mark.parametrize("name", EXPORTS)
def test_predict_tokens_signature_has_no_string_input_or_output(setup, name):
    tokens = loaders.signature_defs(setup[name]["dir"])["predict_tokens"]
    for key, info in list(tokens.inputs.items()) + list(tokens.outputs.items()):
        assert info.dtype != tf.string.as_datatype_enum, key
    assert set(tokens.outputs) == {"probabilities", "label_ids", "num_classes"}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", MULTI)
def test_mixed_task_batch_equals_per_task_batches(results, setup, loader, name):
    spec = setup[name]
    mixed = _outputs(results[loader][f"{name}/text"])["probabilities"]
    tasks = _mixed_tasks(spec)
    alone = {
        task: _outputs(results[loader][f"{name}/only-{task}"])["probabilities"]
        for task in spec["served"]
    }
    for task in spec["served"]:
        rows = [i for i, t in enumerate(tasks) if t == task]
        np.testing.assert_allclose(mixed[rows], alone[task][rows], atol=1e-5)
    # Different prompts really give different outputs on the same text.
    for first, second in zip(spec["served"], spec["served"][1:]):
        assert np.abs(alone[first] - alone[second]).max() > 1e-3, (first, second)


@pytest.mark.parametrize("loader", LOADERS)
def test_ensemble_is_the_mean_of_its_members_in_one_pass(results, setup, loader):
    got = {
        t: _outputs(results[loader][f"prefix_multi/only-{t}"])["probabilities"]
        for t in ("sst", "news", "vote")
    }
    np.testing.assert_allclose(got["vote"], (got["sst"] + got["news"]) / 2, atol=1e-6)
    for member in ("sst", "news"):
        assert np.abs(got["vote"] - got[member]).max() > 1e-3, member
    # The members are far enough apart that averaging logits instead (the
    # softmax of the mean log-probability) misses by far more than 1e-6.
    logit_rule = _softmax((np.log(got["sst"]) + np.log(got["news"])) / 2)
    assert np.abs(logit_rule - got["vote"]).max() > 1e-2


@pytest.mark.parametrize("loader", LOADERS)
def test_tasks_with_fewer_classes_get_zero_for_the_padded_class(results, setup, loader):
    outputs = _outputs(results[loader]["prefix_multi/only-imdb"])
    assert (outputs["probabilities"][:, 2] == 0).all()
    np.testing.assert_allclose(outputs["probabilities"].sum(-1), 1, atol=1e-6)
    assert set(outputs["label_names"]) <= {n.encode() for n in IMDB_LABELS}
    # Each row says how many of its columns are its task's classes.
    assert (outputs["num_classes"] == len(IMDB_LABELS)).all()
    job = setup["jobs"]["prefix_multi/text"]
    mixed = _outputs(results[loader]["prefix_multi/text"])
    want = [len(IMDB_LABELS) if t == "imdb" else len(LABELS) for t in job["tasks"]]
    np.testing.assert_array_equal(mixed["num_classes"], want)
    assert len(set(want)) == 2


def test_each_task_reads_its_own_text_length(setup):
    # The imdb task was trained on 10 positions: its answer on the long text
    # (checked against the reference above) differs from reading all 16.
    untruncated = _hub_reference(setup["members"]["imdb"], SEQUENCE_LENGTH)
    truncated = setup["references"]["imdb"]([TEXTS[2]])
    assert np.abs(untruncated([TEXTS[2]]) - truncated).max() > 1e-4
    info = read_info(setup["prefix_multi"]["dir"])
    assert info["text_positions_per_task"] == {
        "sst": SEQUENCE_LENGTH,
        "imdb": IMDB_TEXT_POSITIONS,
        "news": SEQUENCE_LENGTH,
    }


@pytest.mark.parametrize("loader", LOADERS)
def test_warmup_requests_cover_every_signature_and_task(results, setup, loader):
    for name in EXPORTS:
        spec = setup[name]
        requests = read_warmup_requests(spec["dir"])
        signatures = [r.model_spec.signature_name for r in requests]
        assert sorted(signatures) == ["predict_tokens", "serving_default"]
        assert {r.model_spec.name for r in requests} == {name}
        jobs = {
            label: job
            for label, job in setup["jobs"].items()
            if label.startswith(f"{name}/warmup")
        }
        for label, job in jobs.items():
            assert "outputs" in results[loader][label], results[loader][label]
            if job["signature"] == "predict_tokens":  # tokenised like the texts
                expected = _token_inputs(job["texts"], spec["positions"])
                for key in ("token_ids", "padding_mask"):
                    np.testing.assert_array_equal(job["inputs"][key], expected[key])
        if spec["served"] is not None:
            assert set(next(iter(jobs.values()))["tasks"]) == set(spec["served"])


@pytest.mark.parametrize("loader", LOADERS)
def test_bad_requests_fail_in_the_saved_model_and_the_process_survives(results, loader):
    got = results[loader]
    unknown = got["bad/unknown-task"]["error"]
    assert unknown["code"] == "INVALID_ARGUMENT"
    assert "Known tasks: sst, imdb, news" in unknown["message"]
    assert "weather" in unknown["message"]
    ensemble = got["bad/unknown-ensemble"]["error"]
    assert "Known tasks: sst, imdb, news, vote" in ensemble["message"]
    for label in ("float-ids", "long-ids", "short-task-ids", "bad-task-id"):
        assert got[f"bad/{label}"]["error"]["code"] == "INVALID_ARGUMENT", label
    # The TF runtime's own type check (no loader checks dtypes)...
    assert (
        "to be int32 but float is provided" in got["bad/float-ids"]["error"]["message"]
    )
    # ...and the SavedModel's in-graph shape and task id checks.
    for label in ("long-ids", "short-task-ids"):
        message = got[f"bad/{label}"]["error"]["message"]
        assert "predict_tokens takes token_ids and padding_mask of shape" in message
        assert f"[batch, {TEXT_POSITIONS}]" in message
    assert "task_id must lie in [0, 3)" in got["bad/bad-task-id"]["error"]["message"]
    np.testing.assert_allclose(
        _outputs(got["multi/after-bad"])["probabilities"],
        _outputs(got["multi/text"])["probabilities"],
    )


def test_text_is_truncated_and_the_prompt_is_not(results, setup):
    # The exporter's encoder gives exactly the hand-built rows: TEXTS[2] has
    # 20 tokens and keeps 10 = 16 - Pmax(4) - 2 specials; "" is [CLS] [SEP].
    token_ids, padding_mask = tf.function(TextEncoder(_tokenizer(), TEXT_POSITIONS))(
        tf.constant(TEXTS)
    )
    expected = _token_inputs(TEXTS, TEXT_POSITIONS)
    np.testing.assert_array_equal(token_ids.numpy(), expected["token_ids"])
    np.testing.assert_array_equal(padding_mask.numpy(), expected["padding_mask"])
    assert expected["token_ids"][2].tolist() == [2] + [12, 13] * 4 + [11, 14, 3]
    # The served answer is the reference's with 10 tokens and the whole
    # prompt; keeping 9 or 11 tokens would have been seen.
    served = _outputs(results["c_api"]["multi/only-news"])["probabilities"][2]
    base = setup["multi"]["base"]
    news, _ = base.model(3, setup["multi"]["prompts"]["news"])
    for kept, close in ((9, False), (10, True), (11, False)):
        row = [2, V, V + 1, V + 2] + _word_ids(TEXTS[2])[:kept] + [3]
        ids = np.array([row])
        probabilities = _softmax(
            news({"token_ids": ids, "padding_mask": np.ones_like(ids)})
        )[0]
        assert np.allclose(served, probabilities, atol=1e-5) == close, kept


def test_export_info_describes_the_prompts(setup):
    prefix = read_info(setup["prefix"]["dir"])
    # A prefix takes no sequence positions: all are text.
    assert prefix["prompt_method"] == "prefix"
    assert prefix["prompt_takes_positions"] is False
    assert prefix["sequence_length"] == prefix["text_positions"] == SEQUENCE_LENGTH
    assert prefix["max_text_tokens"] == SEQUENCE_LENGTH - 2
    assert list(prefix["fingerprint"]) == ["base_fingerprint"]
    multi = read_info(setup["prefix_multi"]["dir"])
    assert multi["tasks"] == ["sst", "imdb", "news"]
    assert multi["served_tasks"] == ["sst", "imdb", "news", "vote"]
    assert multi["prompt_lengths"] == [3, 1, 2]
    assert multi["max_prompt_length"] == 3
    assert multi["text_positions"] == SEQUENCE_LENGTH
    assert multi["ensembles"] == {"vote": ["sst", "news"]}
    assert "mean" in multi["ensemble_combination"]
    assert multi["labels"] is None
    assert multi["labels_per_task"] == {
        "sst": LABELS,
        "imdb": IMDB_LABELS,
        "news": LABELS,
        "vote": LABELS,
    }
    embedding = read_info(setup["multi"]["dir"])
    assert embedding["text_positions"] == TEXT_POSITIONS  # 16 - Pmax
    assert embedding["prompt_offset"] == 1
    assert embedding["labels"] == LABELS
    assert embedding["ensembles"] == {}


def test_signatures_are_batch_major_static_and_aliased_for_tpu(setup):
    for name in EXPORTS:
        spec = setup[name]
        signatures = loaders.signature_defs(spec["dir"])
        tokens = signatures["predict_tokens"]
        for key in ("token_ids", "padding_mask"):
            dims = [d.size for d in tokens.inputs[key].tensor_shape.dim]
            assert dims == [-1, spec["positions"]], name
            assert tokens.inputs[key].dtype == tf.int32.as_datatype_enum
        assert {"serving_default", "predict_tokens"} <= set(signatures)
        for signature_name, signature in signatures.items():
            if signature_name.startswith("__"):  # __saved_model_init_op
                continue
            infos = list(signature.inputs.values()) + list(signature.outputs.values())
            for info in infos:
                assert info.tensor_shape.dim[0].size == -1  # batch-major
        aliased = [
            f
            for f, a in loaders.function_aliases(spec["dir"]).items()
            if a == TPU_ALIAS
        ]
        assert aliased and all("predict_tokens" in f for f in aliased), name


def test_no_exported_function_is_jit_compiled(setup):
    from tensorflow.core.protobuf import saved_model_pb2

    for name in EXPORTS:
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(setup[name]["dir"], "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        functions = proto.meta_graphs[0].graph_def.library.function
        assert functions
        for function in functions:
            attr = function.attr.get("_XlaMustCompile")
            assert attr is None or not attr.b, function.signature.name


def test_saved_model_cli_lists_the_signatures(setup):
    cli = shutil.which("saved_model_cli")
    command = [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools"]
    result = subprocess.run(
        [*command, "show", "--all", "--dir", setup["multi"]["dir"]],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    for expected in (
        "signature_def['serving_default']",
        "signature_def['predict_tokens']",
    ):
        assert expected in result.stdout
    for name in ("inputs['text']", "inputs['task']", "inputs['task_id']"):
        assert name in result.stdout
    assert "outputs['label_names']" in result.stdout


def test_existing_version_is_never_overwritten(setup):
    directory = setup["k2"]["dir"]
    before = os.path.getmtime(os.path.join(directory, "saved_model.pb"))
    with pytest.raises(FileExistsError, match="already exists.*--version 2"):
        export_model(
            setup["k2"]["model"],
            os.path.dirname(directory),
            1,
            tokenizer=_tokenizer(),
            sequence_length=SEQUENCE_LENGTH,
        )
    assert os.path.getmtime(os.path.join(directory, "saved_model.pb")) == before


def test_failed_export_leaves_no_version_and_no_temporary(setup, tmp_path, monkeypatch):
    from tf_softprompt.export import archive

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(archive.layout, "write_warmup_requests", fail)
    with pytest.raises(OSError, match="disk full"):
        export_model(
            setup["k2"]["model"],
            tmp_path / "k2",
            3,
            tokenizer=_tokenizer(),
            sequence_length=SEQUENCE_LENGTH,
        )
    assert os.listdir(tmp_path / "k2") == []


def test_bad_versions_are_refused(setup, tmp_path):
    for version in (0, -1, "latest", True):
        with pytest.raises(ValueError, match="positive integers"):
            export_model(
                setup["k2"]["model"],
                tmp_path,
                version,
                tokenizer=_tokenizer(),
                sequence_length=SEQUENCE_LENGTH,
            )


def test_prompts_trained_on_another_base_fail_on_the_fingerprint(setup, tmp_path):
    other = _K3Base(seed=2)
    _, layer = other.model(2)
    foreign = str(tmp_path / "foreign.prompt.npz")
    layer.save_prompt(foreign, task="foreign")
    model, _ = setup["multi"]["base"].model(2)
    with pytest.raises(ValueError, match="fingerprint"):
        export_model(
            model,
            tmp_path / "mixed",
            1,
            tokenizer=_tokenizer(),
            sequence_length=SEQUENCE_LENGTH,
            prompts=[setup["multi"]["artifacts"]["sst"], foreign],
        )
    assert not os.path.exists(tmp_path / "mixed" / "1")


def test_bad_ensembles_labels_and_text_lengths_are_refused(setup, tmp_path):
    model, _ = setup["multi"]["base"].model(2)
    common = {
        "tokenizer": _tokenizer(),
        "sequence_length": SEQUENCE_LENGTH,
        "prompts": setup["multi"]["artifacts"],
    }
    cases = [
        ({"ensembles": {"sst": ["imdb", "news"]}}, "name of a task"),
        ({"ensembles": {"vote": ["sst", "weather"]}}, "not exported tasks"),
        ({"ensembles": {"vote": ["sst"]}}, "at least two different members"),
        (
            {
                "ensembles": {"vote": ["sst", "news"]},
                "labels": {"sst": LABELS, "imdb": LABELS, "news": ["a", "b", "c"]},
            },
            "must share their label names",
        ),
        ({"labels": ["negative", "positive"]}, "one label name per class"),
        ({"text_lengths": {"sst": 2}}, r"in \(2, 12\]"),
        ({"text_lengths": {"weather": 8}}, "not exported tasks"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            export_model(model, tmp_path / "bad", i + 1, **common, **kwargs)
    assert not os.path.exists(tmp_path / "bad")


def test_prepend_prompts_of_different_lengths_need_a_mask(setup, tmp_path):
    keras.utils.set_random_seed(0)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(V, H)(token_ids)  # no mask_zero: no mask
    layer = PromptPrepend(2, offset=1)
    x = keras.layers.GlobalAveragePooling1D()(layer(x))
    model = keras.Model(token_ids, keras.layers.Dense(3)(x))
    vocabulary = np.asarray(model.layers[1].embeddings)
    paths = {}
    for task, length in (("a", 2), ("b", 1)):
        paths[task] = str(tmp_path / f"{task}.prompt.npz")
        prompt = np.ones((length, H), np.float32)
        artifact.save_prompt(
            paths[task], prompt, vocabulary, method="prepend", task=task, offset=1
        )
    with pytest.raises(ValueError, match="mask_zero=True"):
        export_model(
            model,
            tmp_path / "unmasked",
            1,
            tokenizer=_tokenizer(),
            sequence_length=SEQUENCE_LENGTH,
            prompts=paths,
            vocabulary=vocabulary,
        )


def test_prompt_table_pads_shorter_prompts_and_masks_them(setup):
    vocabulary = setup["multi"]["base"].embedding.embeddings.numpy()
    table = MultiTaskPromptTable.from_artifacts(setup["multi"]["artifacts"], vocabulary)
    assert table.tasks == ("sst", "imdb", "news")
    assert table.lengths == (4, 2, 3)
    assert table.table.shape == (12, H)
    np.testing.assert_array_equal(table.table[4:6], setup["multi"]["prompts"]["imdb"])
    assert not table.table[6:8].any()
    ids, mask = table.prompt_ids(tf.constant([1, 2]))
    assert ids.numpy().tolist() == [
        [V + 4 + j for j in range(4)],
        [V + 8 + j for j in range(4)],
    ]
    assert mask.numpy().tolist() == [
        [True, True, False, False],
        [True, True, True, False],
    ]


def test_duplicate_task_names_are_refused(setup):
    vocabulary = setup["multi"]["base"].embedding.embeddings.numpy()
    path = setup["multi"]["artifacts"]["sst"]
    with pytest.raises(ValueError, match="must be unique"):
        MultiTaskPromptTable.from_artifacts([path, path], vocabulary)


@pytest.mark.parametrize("name", EXPORTS)
def test_each_weight_is_stored_once(setup, name):
    assert_each_weight_once(setup[name]["dir"])
