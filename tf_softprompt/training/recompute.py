"""Recompute transformer activations in the backward pass (opt-in).

Trades one extra forward pass per step for memory: see
`recompute_transformer_layers`. Which layers are the transformer blocks is
keras-hub knowledge and comes from `tf_softprompt.hub.transformer_layers`.
"""

import tensorflow as tf

from tf_softprompt.hub import context
from tf_softprompt.training.variables import SEED_STATE_SUFFIX, tf_variable


def recompute_transformer_layers(model):
    """Recompute each transformer layer's activations in the backward pass.

    Patches the `call` of every layer in `backbone.transformer_layers` (the
    keras-hub convention), on these instances, so that a training forward
    inside a `tf.function` (as `Trainer`'s step) keeps only each layer's
    input; the backward pass runs the layer again to get its gradients. Peak
    memory then holds one layer's activations instead of all of them, for
    one extra forward pass per step. Measured on all-MiniLM-L6-v2 (batch 16,
    128 tokens + 20 prompt tokens, CPU): peak RSS of the prompt-tuning step
    about 1830 -> 1275 MB, step time about 1.4x (`bench/train_step.py`).

    The gradients are the ones without recomputation: the layer's dropout
    seed states are rewound to their values before the forward, so the
    recomputation draws the same dropout masks, and are left as the forward
    left them. Weight gradients are computed only for variables that are
    Keras-trainable, so a frozen base (prompt tuning) costs no weight
    gradients. Inference (`training` false) is unchanged.

    Args:
        model: a keras-hub Backbone, or a Task with a `backbone`.

    Returns:
        The number of layers patched.

    Example:
    ```python
    model = keras_hub.models.TextClassifier.from_preset(path, num_classes=2)
    tf_softprompt.hub.enable_prompt_tuning(model, 20)
    recompute_transformer_layers(model)  # before tracing the train step
    ```
    """
    from tf_softprompt import hub

    layers = hub.transformer_layers(model)
    for layer in layers:
        if getattr(layer, "_tf_softprompt_recompute", False):
            continue
        object.__setattr__(layer, "call", _recomputed_call(layer))
        object.__setattr__(layer, "_tf_softprompt_recompute", True)
    return len(layers)


def _recomputed_call(layer):
    original = layer.call
    seeds = [
        v for v in layer.non_trainable_variables if v.path.endswith(SEED_STATE_SUFFIX)
    ]
    seed_states = [tf_variable(v) for v in seeds]
    by_id = {id(tf_variable(v)): v for v in layer.weights}

    def wants_gradient(variable):
        # Variables read in the layer but not its own: differentiate them.
        owner = by_id.get(id(variable))
        return owner is None or owner.trainable

    def call(inputs, *args, training=None, **kwargs):
        if not training or kwargs.get("return_attention_scores"):
            return original(inputs, *args, training=training, **kwargs)
        before = [tf.identity(s.read_value()) for s in seed_states]
        # The prompted call's state (the prompt's values, computed once per
        # forward outside this layer): the recomputation runs in it again,
        # and the values are an input here, so their gradient flows.
        state = context.current()
        values = () if state is None or state.values is None else (state.values,)

        def run(x, values):
            if not values:
                return original(x, *args, training=training, **kwargs)
            with context.scope(state.replace(values=values[0])):
                return original(x, *args, training=training, **kwargs)

        @tf.custom_gradient
        def forward(x, *values):
            y = run(x, values)

            def gradient(dy, variables=None):
                variables = list(variables or ())
                wanted = [v for v in variables if wants_gradient(v)]
                # Without this dependency on `dy` the graph executor may run
                # the recomputation during the forward pass, as soon as `x`
                # exists, and keep every layer's activations alive again.
                with tf.control_dependencies([dy]):
                    x_again = tf.identity(x)
                    values_again = [tf.identity(v) for v in values]
                    after = [tf.identity(s.read_value()) for s in seed_states]
                    for state_variable, value in zip(seed_states, before):
                        state_variable.assign(value)
                with tf.GradientTape() as tape:
                    tape.watch([x_again, *values_again])
                    tape.watch(wanted)
                    y_again = run(x_again, values_again)
                sources = [x_again, *values_again] + wanted
                grads = tape.gradient(y_again, sources, output_gradients=dy)
                for state_variable, value in zip(seed_states, after):
                    state_variable.assign(value)
                inputs_grads = grads[: 1 + len(values)]
                by_variable = dict(
                    zip((id(v) for v in wanted), grads[1 + len(values) :])
                )
                return inputs_grads, [by_variable.get(id(v)) for v in variables]

            return y, gradient

        return forward(inputs, *values)

    return call
