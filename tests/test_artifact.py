"""The prompt artifact (`tf_softprompt.artifact`): format, checks, atomicity."""

import json
import os

import numpy as np
import pytest

import tf_softprompt
from tf_softprompt import artifact, keras2

V, H, P = 30, 4, 3
RNG = np.random.default_rng(0)
W = RNG.normal(size=(V, H)).astype("float32")
PROMPT = RNG.normal(size=(P, H)).astype("float32")


@pytest.fixture
def saved(tmp_path):
    path = str(tmp_path / "task.prompt.npz")
    artifact.save_prompt(path, PROMPT, W, task="sst2", initializer="uniform")
    return path


def test_round_trip_keeps_values_and_metadata(saved):
    values, meta = artifact.load_prompt(saved, W)
    np.testing.assert_array_equal(values, PROMPT)
    assert meta["format"] == "tf-softprompt/2"
    assert (meta["num_prompt_tokens"], meta["hidden_dim"], meta["vocab_size"]) == (
        P,
        H,
        V,
    )
    assert (meta["task"], meta["initializer"], meta["method"]) == (
        "sst2",
        "uniform",
        "embedding",
    )
    assert meta["dtype"] == "float32"
    assert meta["vocab_fingerprint"] == artifact.vocab_fingerprint(W)


def test_file_is_readable_with_numpy_alone(saved):
    with np.load(saved, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["prompt"], PROMPT)
        meta = json.loads(str(data["metadata"]))
    assert meta["vocab_size"] == V


def test_fingerprint_depends_on_values_and_shape():
    assert artifact.vocab_fingerprint(W) == artifact.vocab_fingerprint(W.copy())
    changed = W.copy()
    changed[5, 2] += 1e-3
    assert artifact.vocab_fingerprint(changed) != artifact.vocab_fingerprint(W)
    reshaped = W.reshape(V * 2, H // 2)
    assert artifact.vocab_fingerprint(reshaped) != artifact.vocab_fingerprint(W)


def test_fingerprints_follow_their_documented_definitions():
    # Computed here from the README's definition, not by the code under test.
    import hashlib

    digest = hashlib.sha256(b"[30, 4]" + W.astype("<f4").tobytes()).hexdigest()
    assert artifact.vocab_fingerprint(W) == "sha256:" + digest
    a, b = W[:2], PROMPT
    parts = b"".join(
        name.encode() + b"\0" + shape + b"\0" + array.astype("<f4").tobytes()
        for name, shape, array in (("a/w", b"[2, 4]", a), ("b/w", b"[3, 4]", b))
    )
    expected = "sha256:" + hashlib.sha256(parts).hexdigest()
    assert artifact.weights_fingerprint([("b/w", b), ("a/w", a)]) == expected


def test_a_format_1_file_still_loads(tmp_path):
    # What tf-softprompt 0.1 wrote: no "shape" key, format tf-softprompt/1.
    old = {
        "format": "tf-softprompt/1",
        "method": "embedding",
        "num_prompt_tokens": P,
        "hidden_dim": H,
        "vocab_size": V,
        "dtype": "float32",
        "initializer": "uniform",
        "task": "old",
        "offset": 1,
        "vocab_fingerprint": artifact.vocab_fingerprint(W),
    }
    path = str(tmp_path / "old.prompt.npz")
    np.savez(path, prompt=PROMPT, metadata=np.array(json.dumps(old)))
    values, meta = artifact.load_prompt(path, W)
    np.testing.assert_array_equal(values, PROMPT)
    assert meta["shape"] == [P, H] and meta["task"] == "old"


def test_mismatched_hidden_size_names_both_values(saved):
    with pytest.raises(ValueError, match=f"hidden_dim={H}.*hidden_dim={H + 2}"):
        artifact.load_prompt(saved, np.zeros((V, H + 2), "float32"))


def test_mismatched_vocab_size_names_both_values(saved):
    with pytest.raises(ValueError, match=f"vocab_size={V}.*vocab_size={V + 1}"):
        artifact.load_prompt(saved, np.zeros((V + 1, H), "float32"))


def test_mismatched_fingerprint_names_both_values(saved):
    other = W + 1.0
    expected = artifact.vocab_fingerprint(W)
    actual = artifact.vocab_fingerprint(other)
    with pytest.raises(ValueError, match=f"{expected}.*{actual}"):
        artifact.load_prompt(saved, other)


def test_truncated_file_is_reported_as_corrupt(saved):
    with open(saved, "rb") as f:
        data = f.read()
    with open(saved, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        artifact.load_prompt(saved, W)


def test_garbage_file_is_reported_as_corrupt(tmp_path):
    path = str(tmp_path / "garbage.npz")
    with open(path, "wb") as f:
        f.write(b"not a zip file at all")
    with pytest.raises(ValueError, match="truncated"):
        artifact.load_prompt(path)


def test_nan_is_refused_on_save(tmp_path):
    bad = PROMPT.copy()
    bad[1, 2] = np.nan
    bad[0, 0] = np.inf
    path = str(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="2 NaN or Inf"):
        artifact.save_prompt(path, bad, W)
    assert not os.path.exists(path)


def test_nan_is_refused_on_load(saved):
    with np.load(saved) as data:
        meta = str(data["metadata"])
    bad = PROMPT.copy()
    bad[2, 1] = np.nan
    np.savez(saved, prompt=bad, metadata=np.array(meta))
    with pytest.raises(ValueError, match="1 NaN or Inf"):
        artifact.load_prompt(saved, W)


def test_shape_disagreeing_with_metadata_is_corrupt(saved):
    with np.load(saved) as data:
        meta = str(data["metadata"])
    np.savez(saved, prompt=PROMPT[:2], metadata=np.array(meta))
    with pytest.raises(ValueError, match=rf"\[2, {H}\].*\[{P}, {H}\]"):
        artifact.load_prompt(saved)


def test_metadata_missing_keys_is_corrupt(saved):
    with np.load(saved) as data:
        meta = json.loads(str(data["metadata"]))
    del meta["vocab_size"]
    np.savez(saved, prompt=PROMPT, metadata=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match=r"lacks \['vocab_size'\]"):
        artifact.load_prompt(saved, W)


def test_wrong_suffix_is_refused(tmp_path):
    path = str(tmp_path / "prompt.h5")
    with pytest.raises(ValueError, match=r"end in \.npz.*prompt\.h5"):
        artifact.save_prompt(path, PROMPT, W)
    with pytest.raises(ValueError, match=r"end in \.npz"):
        artifact.load_prompt(path)


def test_prompt_with_other_hidden_size_is_refused_on_save(tmp_path):
    with pytest.raises(ValueError, match=f"{H + 1} differs .* {H}"):
        artifact.save_prompt(str(tmp_path / "p.npz"), np.ones((P, H + 1)), W)


def test_failed_write_leaves_the_old_file_and_no_temp_file(saved, monkeypatch):
    before = open(saved, "rb").read()

    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        artifact.save_prompt(saved, PROMPT * 2, W)
    assert open(saved, "rb").read() == before
    assert os.listdir(os.path.dirname(saved)) == [os.path.basename(saved)]


def test_layers_save_and_load_their_prompt(tmp_path):
    path = str(tmp_path / "layer.npz")
    source = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    source.build()
    meta = source.save_prompt(path, task="qa")
    assert (meta["method"], meta["task"], meta["num_prompt_tokens"]) == (
        "embedding",
        "qa",
        P,
    )
    target = keras2.PromptEmbedding.from_matrix(W, P)
    target.build()
    target.load_prompt(path)
    np.testing.assert_array_equal(target.prompt.numpy(), source.prompt.numpy())
    assert target.trainable_variables[0] is target.prompt

    prepend = tf_softprompt.PromptPrepend(P, offset=1)
    prepend.build((None, None, H))
    with pytest.raises(ValueError, match="needs the base model's `vocabulary`"):
        prepend.load_prompt(path)
    prepend_path = str(tmp_path / "prepend.npz")
    prepend.save_prompt(prepend_path, vocabulary=W)
    other = keras2.PromptPrepend(P, offset=0)
    other.build((None, None, H))
    with pytest.raises(ValueError, match="offset=1, but .* has offset=0"):
        other.load_prompt(prepend_path, vocabulary=W)
    with pytest.raises(ValueError, match="'embedding', but .* has method='prepend'"):
        prepend.load_prompt(path, vocabulary=W)
    same = keras2.PromptPrepend(P, offset=1)
    same.build((None, None, H))
    same.load_prompt(prepend_path, vocabulary=W)
    np.testing.assert_array_equal(same.prompt.numpy(), prepend.prompt.numpy())

    too_long = tf_softprompt.PromptEmbedding.from_matrix(W, P + 1)
    too_long.build()
    with pytest.raises(ValueError, match=rf"\[{P}, {H}\].*\[{P + 1}, {H}\]"):
        too_long.load_prompt(path)


def test_loading_into_an_unbuilt_layer_is_refused(saved):
    layer = tf_softprompt.PromptPrepend(P)
    with pytest.raises(ValueError, match="not built yet"):
        layer.load_prompt(saved, vocabulary=W)


def test_prompt_embedding_records_the_offset_its_caller_chose(tmp_path):
    path = str(tmp_path / "after_cls.npz")
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    layer.build()
    meta = layer.save_prompt(path, offset=1, task="cls")
    assert meta["offset"] == 1
    _, stored = artifact.load_prompt(path, W)
    assert stored["offset"] == 1
    other = keras2.PromptEmbedding.from_matrix(W, P)
    other.build()
    other.load_prompt(path)  # the layer does not place ids, so any offset loads
    np.testing.assert_array_equal(other.prompt.numpy(), layer.prompt.numpy())


def test_saved_artifact_has_ordinary_umask_permissions(tmp_path):
    path = tmp_path / "shared.npz"
    artifact.save_prompt(str(path), PROMPT, W)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
