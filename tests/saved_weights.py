"""What an export's SavedModel stores as variables (not a test module)."""

import hashlib
import os

import numpy as np
import tensorflow as tf


def stored_tensors(export_dir):
    """`{checkpoint key: array}` of every variable a SavedModel stores."""
    reader = tf.train.load_checkpoint(
        os.path.join(export_dir, "variables", "variables")
    )
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def assert_each_weight_once(export_dir, min_size=16):
    """No two stored variables hold the same values (a weight saved twice,
    under two paths, is what TF Serving would restore twice). Constant
    tensors (zero biases, unit scales) are alike without being copies and
    are not compared."""
    seen = {}
    for key, value in stored_tensors(export_dir).items():
        if value.size < min_size or np.all(value == value.flat[0]):
            continue
        digest = hashlib.sha256(value.tobytes() + str(value.shape).encode()).hexdigest()
        assert digest not in seen, (
            f"{export_dir} stores one weight twice: {seen.get(digest)} and {key}"
        )
        seen[digest] = key
