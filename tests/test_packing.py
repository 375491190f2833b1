"""`tf_softprompt.packing`, without keras-hub: against a Python reference.

The reference builds each row by hand: the row's valid tokens, the
example's unmasked prompt ids after its first `offset` valid tokens, then
padding.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_softprompt import packing

PAD = 0


def reference_row(ids, mask, prompt, prompt_mask, offset):
    valid = [int(t) for t, m in zip(ids, mask) if m]
    cut = min(offset, len(valid))
    slots = [int(p) for p, m in zip(prompt, prompt_mask) if m]
    row = valid[:cut] + slots + valid[cut:]
    width = len(ids) + len(prompt)
    return row + [PAD] * (width - len(row)), len(row)


CASES = {
    "right": [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]],
    "left": [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]],
    "middle": [[1, 0, 1, 0, 1], [1, 1, 0, 0, 1]],
}


@pytest.mark.parametrize("layout", list(CASES))
@pytest.mark.parametrize("offset", [0, 1, 4])
def test_extended_rows_equal_the_hand_built_rows(layout, offset):
    mask = np.array(CASES[layout], bool)
    ids = np.where(mask, np.arange(10, 20).reshape(2, 5), PAD).astype("int32")
    prompt = np.array([[100, 101, 102], [200, 201, 202]], "int32")
    prompt_mask = np.array([[True, True, True], [True, False, False]])
    extended, extension = packing.extend_inputs(
        {"token_ids": ids, "padding_mask": mask}, prompt, prompt_mask, offset
    )
    got_ids = extended["token_ids"].numpy()
    got_mask = extended["padding_mask"].numpy()
    for b in range(2):
        row, n = reference_row(ids[b], mask[b], prompt[b], prompt_mask[b], offset)
        assert list(got_ids[b, :n]) == row[:n]
        assert got_mask[b].tolist() == [True] * n + [False] * (8 - n)
    # restore() drops the slots and gives back the caller's layout.
    values = tf.cast(extended["token_ids"], tf.float32)[..., None]
    restored = extension.restore(values).numpy()[..., 0]
    np.testing.assert_array_equal(restored[mask], ids[mask])
    # The layout marks each row's valid prompt slots in the extended rows.
    is_prompt = extension.layout.is_prompt(tf.range(8)).numpy()
    np.testing.assert_array_equal(is_prompt, extension.is_prompt.numpy())
    assert is_prompt.sum(axis=1).tolist() == [3, 1]


def test_segment_ids_get_zero_at_slots_and_layout_gives_unprompted_positions():
    ids = np.array([[5, 6, 7, 8]], "int32")
    segments = np.array([[0, 0, 1, 1]], "int32")
    extended, extension = packing.extend_inputs(
        {"token_ids": ids, "segment_ids": segments}, np.array([[90, 91]]), None, 1
    )
    assert extended["token_ids"].numpy().tolist() == [[5, 90, 91, 6, 7, 8]]
    assert extended["segment_ids"].numpy().tolist() == [[0, 0, 0, 0, 1, 1]]
    assert extended["padding_mask"].numpy().tolist() == [[1] * 6]
    positions = extension.layout.unprompted_positions(tf.range(6)).numpy()
    assert positions[0, [0, 3, 4, 5]].tolist() == [0, 1, 2, 3]


def test_packing_only_works_with_unknown_shapes_in_a_graph():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.bool),
        ]
    )
    def pack(ids, mask):
        extended, extension = packing.extend_inputs(
            {"token_ids": ids, "padding_mask": mask}
        )
        return extended["token_ids"], extension.restore(
            extended["token_ids"][..., None]
        )

    ids = tf.constant([[0, 3, 4], [5, 6, 0]])
    mask = ids > 0
    packed, restored = pack(ids, mask)
    assert packed.numpy().tolist() == [[3, 4, 0], [5, 6, 0]]
    np.testing.assert_array_equal(restored.numpy()[..., 0][mask.numpy()], [3, 4, 5, 6])


def test_layout_read_back_from_extended_ids():
    ids = np.array([[5, 50, 51, 6, 0]], "int32")
    layout = packing.Layout.from_token_ids(ids, ids > 0, vocab_size=50)
    assert layout.start.numpy().tolist() == [1] and layout.count.numpy().tolist() == [2]
