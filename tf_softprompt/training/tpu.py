"""What can be checked about TPU readiness without a TPU.

A TPU runs the replica step as one XLA program. That needs:

1. fixed input shapes: every batch has the same static shape, which
   `drop_remainder=True` and fixed-length tokenisation give;
2. no string, ragged or variant tensors in the step (tokenisation stays in
   the `tf.data` pipeline on the host);
3. no op whose output shape depends on data (`Where` with one input,
   `Unique`, boolean masking...), i.e. every tensor in the traced step has a
   fully known shape;
4. a step that XLA compiles (`jit_compile=True`).

`check_step` verifies 1-3 on the traced graph of `Trainer.replica_step` and
4 by lowering the same step to XLA HLO on this machine's CPU. This is not a
TPU run: TPU-specific limits (memory, op coverage of the TPU backend, the
`TPUStrategy` host loop) are not exercised here.
"""

import dataclasses

import tensorflow as tf

# Ops that are allowed to carry strings: assertion messages. XLA drops
# `Assert` (and the constants feeding it), so they never reach the device.
_ASSERT_OPS = {"Assert", "AssertV2"}
_DYNAMIC_SHAPE_OPS = {"Where", "Unique", "UniqueV2", "UniqueWithCounts", "NonZero"}
# Gradient bookkeeping whose output length TF's shape inference leaves open
# but which is computed from static shapes only, so XLA folds it to a
# constant: the reduction axes of a broadcast gradient.
_SHAPE_ONLY_OPS = {"BroadcastGradientArgs"}


@dataclasses.dataclass
class StepReport:
    """What was found in a traced train step.

    Attributes:
        op_types: sorted set of the op types in the step (nested functions
            included).
        input_problems: inputs without a static shape or of string dtype.
        string_ops: ops producing string, ragged or variant tensors (other
            than assertion messages).
        dynamic_shape_ops: ops whose output shapes are not fully known.
        hlo_bytes: size of the XLA HLO text, or 0 if not compiled.
        compile_error: the XLA error message, or "".
    """

    op_types: list
    input_problems: list
    string_ops: list
    dynamic_shape_ops: list
    hlo_bytes: int = 0
    compile_error: str = ""

    @property
    def ready(self):
        return not (
            self.input_problems
            or self.string_ops
            or self.dynamic_shape_ops
            or self.compile_error
            or not self.hlo_bytes
        )

    def problems(self):
        lines = []
        for title, items in (
            ("inputs", self.input_problems),
            ("string/ragged ops", self.string_ops),
            ("dynamic shapes", self.dynamic_shape_ops),
        ):
            if items:
                lines.append(f"{title}: {items[:10]}")
        if self.compile_error:
            lines.append(f"XLA: {self.compile_error[:500]}")
        return lines


def _graphs(graph):
    """The graph and every function graph it calls, recursively."""
    seen, stack = set(), [graph]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for function in getattr(current, "_functions", {}).values():
            nested = getattr(function, "graph", None)
            if nested is not None:
                stack.append(nested)


def _is_assert_input(op):
    return bool(op.outputs) and all(
        consumer.type in _ASSERT_OPS
        for output in op.outputs
        for consumer in output.consumers()
    )


def _bad_dtype(dtype):
    return dtype in (tf.string, tf.variant) or dtype.name == "resource_string"


def inspect_graph(graph):
    """Op types, string/ragged ops and dynamic-shape ops of a traced graph."""
    op_types, string_ops, dynamic = set(), [], []
    for current in _graphs(graph):
        for op in current.get_operations():
            op_types.add(op.type)
            if op.type in _ASSERT_OPS or _is_assert_input(op):
                continue
            if "Ragged" in op.type or any(_bad_dtype(t.dtype) for t in op.outputs):
                string_ops.append(f"{op.type}:{op.name}")
            if op.type in _SHAPE_ONLY_OPS:
                continue
            if op.type in _DYNAMIC_SHAPE_OPS or any(
                t.dtype != tf.resource and not t.shape.is_fully_defined()
                for t in op.outputs
            ):
                dynamic.append(f"{op.type}:{op.name}")
    return sorted(op_types), string_ops, dynamic


def _input_problems(element_spec):
    problems = []
    for spec in tf.nest.flatten(element_spec):
        if not spec.shape.is_fully_defined():
            problems.append(f"{spec.name or 'input'} has shape {spec.shape}")
        if _bad_dtype(spec.dtype):
            problems.append(f"{spec.name or 'input'} is {spec.dtype.name}")
    return problems


def check_step(trainer, element_spec, compile=True):
    """Inspect `trainer.replica_step` for one per-replica batch spec.

    Args:
        trainer: a `tf_softprompt.training.Trainer`.
        element_spec: `(features_spec, labels_spec)` of one per-replica batch,
            e.g. `training_dataset(...).element_spec`.
        compile: also lower the step to XLA HLO (`jit_compile=True`).

    Returns:
        `StepReport`; `report.ready` is True when every check passed.
    """
    features_spec, labels_spec = element_spec
    concrete = tf.function(trainer.replica_step).get_concrete_function(
        features_spec, labels_spec
    )
    op_types, string_ops, dynamic = inspect_graph(concrete.graph)
    report = StepReport(op_types, _input_problems(element_spec), string_ops, dynamic)
    if compile:
        compiled = tf.function(trainer.replica_step, jit_compile=True)
        features = tf.nest.map_structure(
            lambda s: tf.zeros(s.shape, s.dtype), features_spec
        )
        labels = tf.zeros(labels_spec.shape, labels_spec.dtype)
        try:
            hlo = compiled.experimental_get_compiler_ir(features, labels)(stage="hlo")
            report.hlo_bytes = len(hlo)
        except Exception as e:  # noqa: BLE001 - the report carries the reason
            report.compile_error = f"{type(e).__name__}: {e}"
    return report


def assert_tpu_ready(trainer, element_spec):
    """Raise `ValueError` listing every TPU-readiness problem of the step."""
    report = check_step(trainer, element_spec)
    if not report.ready:
        raise ValueError(
            "The train step is not TPU-ready:\n  " + "\n  ".join(report.problems())
        )
    return report
