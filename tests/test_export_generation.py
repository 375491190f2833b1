"""Causal-LM export: generated text through the session loader and C API.

A tiny GPT-2 (character-level BPE vocabulary, its real GPT-2 preprocessor,
one layer) with prompt tuning from `tf_softprompt.hub` is exported
single-task and multi-task (prompts of lengths 3 and 2), baked (the
default); every signature runs in one session-loader process and one
`c_loader` process, and must equal Python (greedy): `CausalLM.generate` for
the text, `generate_step` for `predict_tokens`' ids and mask (by value),
`handle.call` for `score_tokens`' logits. The numeric signatures contain no
string tensor anywhere in their graphs. (Baked against unbaked, other models
and methods: `test_export_baking.py`.)
"""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tf_softprompt import hub
from tf_softprompt.export import TPU_ALIAS, export_causal_lm, read_warmup_requests
from tf_softprompt.serving import loaders

CHARS = "abcdefghijklmnopqrstuvwxyz"
TOKENS = ["<|endoftext|>", *CHARS, *("Ġ" + c for c in CHARS), "Ġ", "Ġt", "Ġth", "Ġthe"]
MERGES = ["Ġ t", "Ġt h", "Ġth e"]
SEQUENCE_LENGTH, PMAX = 14, 3
TEXT_POSITIONS = SEQUENCE_LENGTH - PMAX
TEXTS = ["the good film", "a", "", "the plot was very long and slow indeed"]
TASKS = ["story", "poem", "poem", "story"]
LENGTHS = {"story": 3, "poem": 2}


def _plain_lm():
    """The same tiny GPT-2 every time (seeded), without prompt tuning."""
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={t: i for i, t in enumerate(TOKENS)}, merges=MERGES
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=TEXT_POSITIONS
    )
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(TOKENS),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)
    lm.compile(sampler="greedy")
    return lm


def _prompted_lm(prompt):
    lm = _plain_lm()
    handle = hub.enable_prompt_tuning(lm, len(prompt))
    handle.prompt.assign(prompt)
    return lm, handle


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    rng = np.random.default_rng(0)
    prompts = {
        t: rng.normal(0, 2, (n, 16)).astype(np.float32) for t, n in LENGTHS.items()
    }
    expected, paths, tokens = {}, {}, None
    for task, prompt in prompts.items():
        lm, handle = _prompted_lm(prompt)
        if tokens is None:
            features = lm.preprocessor.generate_preprocess(
                TEXTS, sequence_length=TEXT_POSITIONS
            )
            tokens = {k: np.asarray(v, np.int32) for k, v in features.items()}
        generated = handle.generate_step(
            {k: tf.constant(v) for k, v in tokens.items()},
            stop_token_ids=[lm.preprocessor.tokenizer.end_token_id],
        )
        mask = generated["padding_mask"].numpy().astype(np.int32)
        expected[task] = {
            "text": lm.generate(TEXTS, max_length=TEXT_POSITIONS),
            # The pad id (0) follows each row's end, as served.
            "token_ids": np.where(mask > 0, generated["token_ids"].numpy(), 0),
            "padding_mask": mask,
            "logits": handle.call(tokens).numpy(),
        }
        paths[task] = str(root / f"{task}.prompt.npz")
        handle.save_prompt(paths[task], task=task)
    lm, _ = _prompted_lm(prompts["story"])
    dirs = {
        "single": export_causal_lm(
            lm, root / "single", 1, sequence_length=SEQUENCE_LENGTH, task="story"
        ),
        "multi": export_causal_lm(
            _plain_lm(),
            root / "multi",
            1,
            sequence_length=SEQUENCE_LENGTH,
            prompts=paths,
        ),
    }
    text = np.array([t.encode() for t in TEXTS], dtype=object)
    tasks = np.array([t.encode() for t in TASKS], dtype=object)
    task_ids = np.array([list(LENGTHS).index(t) for t in TASKS], np.int32)
    mixed_tokens = {**tokens, "task_id": task_ids}
    jobs = {
        "single": ("single", "serving_default", {"text": text}),
        "mixed": ("multi", "serving_default", {"text": text, "task": tasks}),
        "single/tokens": ("single", "predict_tokens", tokens),
        "mixed/tokens": ("multi", "predict_tokens", mixed_tokens),
        "single/score": ("single", "score_tokens", tokens),
        "mixed/score": ("multi", "score_tokens", mixed_tokens),
        "unknown": (
            "multi",
            "serving_default",
            {"text": text[:1], "task": np.array([b"essay"], dtype=object)},
        ),
    }
    for name, directory in dirs.items():
        for i, request in enumerate(read_warmup_requests(directory)):
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            jobs[f"{name}/warmup{i}"] = (
                name,
                request.model_spec.signature_name,
                inputs,
            )
    job_list = [
        {"export_dir": dirs[name], "signature": signature, "inputs": inputs}
        for name, signature, inputs in jobs.values()
    ]
    binary = loaders.build_c_loader(str(root / "c_loader"))
    return {
        "dirs": dirs,
        "expected": expected,
        "mask": tokens["padding_mask"].astype(bool),
        **{
            loader: dict(zip(jobs, results))
            for loader, results in loaders.run_both_loaders(job_list, binary).items()
        },
    }


def _texts(result):
    assert "outputs" in result, result
    return [t.decode() for t in result["outputs"]["text"]]


@pytest.mark.parametrize("loader", ["session", "c_api"])
def test_served_text_equals_python_generate(setup, loader):
    assert _texts(setup[loader]["single"]) == setup["expected"]["story"]["text"]
    mixed = _texts(setup[loader]["mixed"])
    for i, task in enumerate(TASKS):
        assert mixed[i] == setup["expected"][task]["text"][i], (i, task)


@pytest.mark.parametrize("loader", ["session", "c_api"])
def test_numeric_signatures_equal_python_by_value(setup, loader):
    mask = setup["mask"]
    for job, row_tasks in (("single", ["story"] * len(TEXTS)), ("mixed", TASKS)):
        tokens = setup[loader][f"{job}/tokens"]["outputs"]
        logits = setup[loader][f"{job}/score"]["outputs"]["logits"]
        for i, task in enumerate(row_tasks):
            want = setup["expected"][task]
            for key in ("token_ids", "padding_mask"):
                np.testing.assert_array_equal(
                    tokens[key][i], want[key][i], err_msg=f"{job} {key} row {i}"
                )
            np.testing.assert_allclose(
                logits[i][mask[i]], want["logits"][i][mask[i]], atol=1e-5
            )
        assert tokens["token_ids"].dtype == np.int32
        assert logits.dtype == np.float32


@pytest.mark.parametrize("loader", ["session", "c_api"])
def test_generation_errors_and_warmup(setup, loader):
    error = setup[loader]["unknown"]["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "Known tasks: story, poem" in error["message"]
    warmups = [k for k in setup[loader] if "/warmup" in k]
    assert len(warmups) == 6  # one per signature, each export
    for key in warmups:
        assert "outputs" in setup[loader][key], setup[loader][key]


def test_prompts_change_the_generated_text(setup):
    assert setup["expected"]["story"]["text"] != setup["expected"]["poem"]["text"]


def test_token_signature_is_static_int_only_and_aliased(setup):
    directory = setup["dirs"]["multi"]
    signatures = loaders.signature_defs(directory)
    tokens = signatures["predict_tokens"]
    for info in list(tokens.inputs.values()) + list(tokens.outputs.values()):
        assert info.dtype == tf.int32.as_datatype_enum
    dims = [d.size for d in tokens.inputs["token_ids"].tensor_shape.dim]
    assert dims == [-1, TEXT_POSITIONS]
    score = signatures["score_tokens"]
    assert score.outputs["logits"].dtype == tf.float32.as_datatype_enum
    dims = [d.size for d in score.outputs["logits"].tensor_shape.dim]
    assert dims == [-1, TEXT_POSITIONS, len(TOKENS)]
    aliases = loaders.function_aliases(directory)
    assert TPU_ALIAS in aliases.values()


def _saved_model(directory):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(f"{directory}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    return proto.meta_graphs[0]


def _string_nodes(meta_graph, signature):
    """Every node with a string type in the graph a signature runs (the call
    nodes feeding its outputs and every function they reach: loop bodies,
    branches, ...), as `(op, name, consumer ops)`; and all op types seen."""
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    outputs = meta_graph.signature_def[signature].outputs.values()
    seen, strings, op_types = set(), [], set()
    string = tf.string.as_datatype_enum

    def visit(node_defs, args=()):
        if string in args:
            strings.append(("function argument", "", ()))
        for node in node_defs:
            op_types.add(node.op)
            types = [a.type for a in node.attr.values()]
            types += [t for a in node.attr.values() for t in a.list.type]
            if string in types:
                consumers = tuple(
                    m.op
                    for m in node_defs
                    if any(i.split(":")[0].lstrip("^") == node.name for i in m.input)
                )
                strings.append((node.op, node.name, consumers))
            for attr in node.attr.values():
                for name in [attr.func.name] + [f.name for f in attr.list.func]:
                    if name in library and name not in seen:
                        seen.add(name)
                        function = library[name].signature
                        kinds = [a.type for a in function.input_arg]
                        kinds += [a.type for a in function.output_arg]
                        visit(library[name].node_def, kinds)

    visit([nodes[o.name.split(":")[0]] for o in outputs])
    return strings, op_types


def _only_assert_messages(strings):
    """Strings that are runtime-check messages: `Assert` ops and the constants
    they print (tf.debugging also leaves unused copies of the messages)."""
    return all(
        op == "Assert" or (op == "Const" and set(consumers) <= {"Assert"})
        for op, _, consumers in strings
    )


@pytest.mark.parametrize("signature", ["predict_tokens", "score_tokens"])
def test_numeric_signatures_hold_no_string_but_check_messages(setup, signature):
    for directory in setup["dirs"].values():
        strings, op_types = _string_nodes(_saved_model(directory), signature)
        # The walk reached the model (its matmuls, the generation loop).
        assert "BatchMatMulV2" in op_types
        assert signature == "score_tokens" or "While" in op_types
        # Only the messages of id/task checks, which XLA drops with the check.
        assert strings and _only_assert_messages(strings), strings
    # The text signature's strings (tokenizer, detokenizer) are seen as such.
    strings, _ = _string_nodes(_saved_model(setup["dirs"]["multi"]), "serving_default")
    assert not _only_assert_messages(strings)


def test_no_generation_function_is_jit_compiled(setup):
    from tensorflow.core.protobuf import saved_model_pb2

    for directory in setup["dirs"].values():
        proto = saved_model_pb2.SavedModel()
        with open(f"{directory}/saved_model.pb", "rb") as f:
            proto.ParseFromString(f.read())
        functions = proto.meta_graphs[0].graph_def.library.function
        assert any("while" in f.signature.name for f in functions)  # the loop
        for function in functions:
            attr = function.attr.get("_XlaMustCompile")
            assert attr is None or not attr.b, function.signature.name


def test_served_text_keeps_tokens_that_share_the_pad_id():
    # GPT-2 pads with id 0, an ordinary token ("!" in the real vocabulary);
    # keras-hub's own generate keeps it, so the export must too.
    from tf_softprompt.export.causal_lm import detokenize_generated

    tokens = ["!", "<|endoftext|>", "a", "Ġ", "Ġa"]
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={t: i for i, t in enumerate(tokens)}, merges=["Ġ a"]
    )
    assert tokenizer.pad_token_id == 0 and tokenizer.end_token_id == 1
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer)
    token_ids = tf.constant([[1, 2, 0, 4, 0, 1, 0], [1, 0, 0, 2, 1, 2, 2]])
    padding_mask = tf.constant([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
    # Traced, as in the served graph (eager keras-hub returns Python lists).
    traced = tf.function(lambda i, m: detokenize_generated(tokenizer, i, m))
    got = traced(token_ids, padding_mask).numpy()
    assert [t.decode() for t in got] == ["a! a!", "!!a"]
    want = preprocessor.generate_postprocess(
        {"token_ids": token_ids, "padding_mask": padding_mask}
    )
    # keras-hub returns Python strings in eager mode.
    want = [t.decode() if isinstance(t, bytes) else t for t in want]
    assert [t.decode() for t in got] == want
