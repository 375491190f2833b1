"""Keras 3 variable details the training code shares."""

import tensorflow as tf

# Keras 3 `SeedGenerator`s (dropout) keep their state in a variable whose
# path ends with this; checkpoints and recomputation must carry it.
SEED_STATE_SUFFIX = "seed_generator_state"


def tf_variable(variable):
    """The `tf.Variable` behind a Keras 3 variable (checkpointable as is)."""
    value = getattr(variable, "value", None)
    if isinstance(value, tf.Variable):
        return value
    return variable
