"""Causal-LM export: generated text through the session loader and C API.

A tiny GPT-2 (character-level BPE vocabulary, one layer) with prompt tuning
from `tf_softprompt.hub` is exported single-task and multi-task (prompts of
lengths 3 and 2); every signature runs in one session-loader process and one
`c_loader` process, and must equal `CausalLM.generate` in Python (greedy).
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
    expected, paths = {}, {}
    for task, prompt in prompts.items():
        lm, handle = _prompted_lm(prompt)
        expected[task] = lm.generate(TEXTS, max_length=TEXT_POSITIONS)
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
    jobs = {
        "single": ("single", "serving_default", {"text": text}),
        "mixed": ("multi", "serving_default", {"text": text, "task": tasks}),
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
        "session": dict(zip(jobs, loaders.run_session_loader(job_list))),
        "c_api": dict(zip(jobs, loaders.run_c_loader(job_list, binary))),
    }


def _texts(result):
    assert "outputs" in result, result
    return [t.decode() for t in result["outputs"]["text"]]


@pytest.mark.parametrize("loader", ["session", "c_api"])
def test_served_text_equals_python_generate(setup, loader):
    assert _texts(setup[loader]["single"]) == setup["expected"]["story"]
    mixed = _texts(setup[loader]["mixed"])
    for i, task in enumerate(TASKS):
        assert mixed[i] == setup["expected"][task][i], (i, task)


@pytest.mark.parametrize("loader", ["session", "c_api"])
def test_generation_errors_and_warmup(setup, loader):
    error = setup[loader]["unknown"]["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "Known tasks: story, poem" in error["message"]
    warmups = [k for k in setup[loader] if "/warmup" in k]
    assert len(warmups) == 4
    for key in warmups:
        assert "outputs" in setup[loader][key], setup[loader][key]


def test_prompts_change_the_generated_text(setup):
    assert setup["expected"]["story"] != setup["expected"]["poem"]


def test_token_signature_is_static_int_only_and_aliased(setup):
    directory = setup["dirs"]["multi"]
    tokens = loaders.signature_defs(directory)["predict_tokens"]
    for info in list(tokens.inputs.values()) + list(tokens.outputs.values()):
        assert info.dtype == tf.int32.as_datatype_enum
    dims = [d.size for d in tokens.inputs["token_ids"].tensor_shape.dim]
    assert dims == [-1, TEXT_POSITIONS]
    aliases = loaders.function_aliases(directory)
    assert TPU_ALIAS in aliases.values()


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
