"""Prompt initialisers (`tf_softprompt.initializers`), checked row by row."""

import json

import keras
import numpy as np
import pytest

import tf_softprompt
from tf_softprompt import initializers

V, H, P = 30, 4, 5
W = np.random.default_rng(0).normal(size=(V, H)).astype("float32")


def _row_ids(values, matrix):
    """The vocabulary id of each row of `values` (-1 if it is no row)."""
    ids = []
    for row in np.asarray(values):
        hits = np.flatnonzero((matrix == row).all(axis=1))
        ids.append(int(hits[0]) if len(hits) else -1)
    return ids


def test_uniform_values_fill_the_range_and_stay_inside_it():
    values = initializers.uniform(scale=0.3, seed=1)((200, H)).numpy()
    assert values.shape == (200, H)
    assert values.min() >= -0.3 and values.max() <= 0.3
    # 800 draws from U(-0.3, 0.3) reach close to both ends.
    assert values.min() < -0.28 and values.max() > 0.28
    again = initializers.uniform(scale=0.3, seed=1)((200, H)).numpy()
    np.testing.assert_array_equal(values, again)


def test_uniform_rejects_a_non_positive_scale():
    with pytest.raises(ValueError, match="scale=0"):
        initializers.uniform(scale=0)


def test_sample_of_embeddings_rows_are_distinct_vocabulary_rows():
    values = initializers.from_sample_of_embeddings(W, seed=3)((P, H)).numpy()
    ids = _row_ids(values, W)
    assert -1 not in ids and len(set(ids)) == P


def test_sample_of_embeddings_respects_population_size():
    init = initializers.from_sample_of_embeddings(W, population_size=6, seed=0)
    ids = _row_ids(init((6, H)).numpy(), W)
    assert sorted(ids) == [0, 1, 2, 3, 4, 5]
    # More rows than the population: sampled with replacement, still < 6.
    ids = _row_ids(init((12, H)).numpy(), W)
    assert -1 not in ids and max(ids) < 6


def test_sample_of_embeddings_rejects_a_bad_population_and_hidden_size():
    with pytest.raises(ValueError, match=f"population_size=0, vocabulary_size={V}"):
        initializers.from_sample_of_embeddings(W, population_size=0)
    init = initializers.from_sample_of_embeddings(W)
    with pytest.raises(ValueError, match=rf"\[{P}, 7\].*\[{V}, {H}\]"):
        init((P, 7))


def test_from_token_ids_averages_groups_and_fills_leftovers_with_fallback():
    fallback = initializers.from_array(np.full((P, H), 9.0, "float32"))
    init = initializers.from_token_ids(W, [3, [4, 7, 8], [10]], fallback=fallback)
    values = init((P, H)).numpy()
    np.testing.assert_allclose(values[0], W[3])
    np.testing.assert_allclose(values[1], (W[4] + W[7] + W[8]) / 3, rtol=1e-6)
    np.testing.assert_allclose(values[2], W[10])
    np.testing.assert_array_equal(values[3:], 9.0)


def test_from_token_ids_default_fallback_samples_vocabulary_rows():
    values = initializers.from_token_ids(W, [2])((3, H)).numpy()
    np.testing.assert_allclose(values[0], W[2])
    assert -1 not in _row_ids(values[1:], W)


def test_from_token_ids_errors_name_the_problem():
    with pytest.raises(ValueError, match=rf"\[{V}\] are outside .*\[0, {V}\)"):
        initializers.from_token_ids(W, [1, [2, V]])
    with pytest.raises(ValueError, match="empty entry"):
        initializers.from_token_ids(W, [[]])
    with pytest.raises(ValueError, match=f"3 token groups .* {2} rows"):
        initializers.from_token_ids(W, [1, 2, 3])((2, H))
    with pytest.raises(ValueError, match=rf"\[{P}, 6\].*\[{V}, {H}\]"):
        initializers.from_token_ids(W, [1])((P, 6))


def test_from_label_words_uses_the_tokenizer_and_averages_subwords():
    pieces = {"great": [5], "terrible": [6, 7]}
    init = initializers.from_label_words(W, ["great", "terrible"], pieces.get)
    values = init((2, H)).numpy()
    np.testing.assert_allclose(values[0], W[5])
    np.testing.assert_allclose(values[1], (W[6] + W[7]) / 2, rtol=1e-6)
    assert "great" in init.description
    with pytest.raises(ValueError, match="'nothing' tokenised to no ids"):
        initializers.from_label_words(W, ["nothing"], lambda word: [])


def test_from_array_copies_values_and_checks_both_shapes():
    array = np.arange(P * H, dtype="float32").reshape(P, H)
    np.testing.assert_array_equal(initializers.from_array(array)((P, H)), array)
    with pytest.raises(ValueError, match=rf"\[{P}, {H}\].*\[{P + 1}, {H}\]"):
        initializers.from_array(array)((P + 1, H))
    with pytest.raises(ValueError, match=r"shape=\[20\]"):
        initializers.from_array(np.zeros(20))


def test_initialisers_build_layer_prompts_in_both_flavours():
    from tf_softprompt import keras2

    init = initializers.from_token_ids(W, [1, [2, 3]])
    for layer in (
        tf_softprompt.PromptEmbedding.from_matrix(W, 2, prompt_initializer=init),
        keras2.PromptEmbedding.from_matrix(W, 2, prompt_initializer=init),
    ):
        layer.build((None, None))
        np.testing.assert_allclose(layer.prompt.numpy()[0], W[1])
        np.testing.assert_allclose(layer.prompt.numpy()[1], (W[2] + W[3]) / 2)


def test_get_resolves_names_and_callables():
    assert initializers.get("uniform").description == "uniform(scale=0.5)"
    normal = keras.initializers.RandomNormal()
    assert initializers.get(normal) is normal
    with pytest.raises(ValueError, match="'zeros_please'"):
        initializers.get("zeros_please")


# Configs: serialize / get ---------------------------------------------------

PIECES = {"great": [5], "terrible": [6, 7]}


def _every_kind():
    import tf_keras

    return {
        "uniform": initializers.uniform(scale=0.3, seed=1),
        "sample": initializers.from_sample_of_embeddings(W, population_size=6, seed=2),
        "token_ids": initializers.from_token_ids(
            W, [3, [4, 7]], fallback=initializers.uniform(seed=4)
        ),
        "label_words": initializers.from_label_words(
            W,
            ["great", "terrible"],
            PIECES.get,
            fallback=initializers.from_sample_of_embeddings(W, seed=9),
        ),
        "array": initializers.from_array(W[:P] * 3),
        "keras": keras.initializers.RandomNormal(stddev=0.2, seed=1),
        "tf_keras": tf_keras.initializers.RandomNormal(stddev=0.2, seed=1),
    }


@pytest.mark.parametrize(
    "kind",
    ["uniform", "sample", "token_ids", "label_words", "array", "keras", "tf_keras"],
)
def test_every_config_is_json_and_rebuilds_the_same_values(kind):
    init = _every_kind()[kind]
    config = json.loads(json.dumps(initializers.serialize(init)))
    again = initializers.get(config, vocabulary=W)
    assert again is not init
    np.testing.assert_array_equal(np.asarray(again((P, H))), np.asarray(init((P, H))))
    assert initializers.serialize(again) == config
    assert initializers.describe(again) == initializers.describe(init)


def test_configs_record_every_argument_but_never_the_vocabulary():
    sample = initializers.from_sample_of_embeddings(W, population_size=6, seed=2)
    assert initializers.serialize(sample) == {
        "name": "from_sample_of_embeddings",
        "args": {"population_size": 6, "seed": 2},
    }
    words = initializers.from_label_words(
        W, ["great", "terrible"], PIECES.get, fallback=sample
    )
    # Label words are recorded with their token-id groups: no tokenizer needed.
    assert initializers.serialize(words) == {
        "name": "from_label_words",
        "args": {
            "words": ["great", "terrible"],
            "token_ids": [[5], [6, 7]],
            "fallback": initializers.serialize(sample),
        },
    }
    array = np.arange(P * H, dtype="float32").reshape(P, H) / 7
    config = initializers.serialize(initializers.from_array(array))
    np.testing.assert_array_equal(np.array(config["args"]["array"], "float32"), array)
    assert initializers.serialize("uniform") == {
        "name": "uniform",
        "args": {"scale": 0.5, "seed": None},
    }


def test_a_rebuilt_vocabulary_initializer_reads_the_vocabulary_it_is_given():
    config = initializers.serialize(
        initializers.from_token_ids(W, [3, [4, 7]], fallback=initializers.uniform())
    )
    doubled = initializers.get(config, vocabulary=2 * W)((2, H)).numpy()
    np.testing.assert_allclose(doubled, [2 * W[3], W[4] + W[7]], rtol=1e-6)
    # A callable vocabulary is read when the initialiser runs, not before
    # (a layer rebuilt from its config has no built embedding yet).
    holder = []
    lazy = initializers.get(config, vocabulary=lambda: holder[0])
    holder.append(-W)
    np.testing.assert_allclose(lazy((2, H)).numpy()[0], -W[3])
    # Ids are checked against the vocabulary actually supplied.
    small = initializers.get(config, vocabulary=lambda: W[:5])
    with pytest.raises(ValueError, match=r"\[7\] are outside .*\[0, 5\)"):
        small((2, H))


def test_uniform_is_u_half_not_keras_uniform():
    """Our "uniform" is U(-0.5, 0.5); Keras' "uniform" is U(-0.05, 0.05)."""
    values = initializers.get("uniform")((200, H)).numpy()
    assert values.min() >= -0.5 and values.max() <= 0.5
    assert np.abs(values).max() > 0.45


def test_config_errors_name_the_problem_and_the_fix():
    config = initializers.serialize(initializers.from_sample_of_embeddings(W))
    with pytest.raises(ValueError, match=r"'from_sample_of_embeddings'.*vocabulary="):
        initializers.get(config)
    unknown = r"name among \[.*'from_array'.*Received: {'name': 'ones'"
    with pytest.raises(ValueError, match=unknown):
        initializers.get({"name": "ones", "args": {}})
    with pytest.raises(ValueError, match="seed=1.5"):
        initializers.uniform(seed=1.5)
    # Where no vocabulary can be supplied, only vocabulary-free ones save.
    assert initializers.serialize(
        initializers.from_array(W[:P]), vocabulary_available=False
    ) == initializers.serialize(initializers.from_array(W[:P]))
    kinds = _every_kind()
    for kind in ("sample", "token_ids", "label_words"):
        with pytest.raises(ValueError, match=r"reads the \[V, H\].*from_array\(init"):
            initializers.serialize(kinds[kind], vocabulary_available=False)

    def custom(shape, dtype=None):
        return np.zeros(shape)

    with pytest.raises(ValueError, match=r"custom.*cannot be saved.*from_array"):
        initializers.serialize(custom)
    # A recorded initialiser with an unrecorded fallback fails on save too.
    with pytest.raises(ValueError, match=r"custom.*cannot be saved"):
        initializers.serialize(initializers.from_token_ids(W, [1], fallback=custom))
