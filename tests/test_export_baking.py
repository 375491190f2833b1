"""Baked causal-LM exports equal unbaked ones, in the session loader and the C API.

For each configuration (form 1 multi-task, prompts of lengths 3 and 2, on
GPT-2, Llama with grouped-query attention and RoPE, and Gemma; form 1
single-task on Llama; form 2 multi-task on GPT-2; a reparameterised prefix
on Llama; GPT-2 single-task is `test_export_generation`'s) the prompted
model is exported baked (the default), and for GPT-2 multi-task (learned
positions) and Llama single-task (RoPE) also with `bake=False`; every
signature runs in one session-loader process and one `c_loader` process:

- `serving_default` text, `predict_tokens` ids and masks: equal;
- `score_tokens` logits: within 1e-5 at the valid positions;
- and every export equals Python: the per-task prompted model (`generate`,
  `generate_step`, `handle.call`), which runs the prompt positions itself.

A mixed batch (tasks interleaved) must give each row its own task's result,
so a shorter prompt's padded slots (or prefix rows) are masked; an unknown
task or task id is `INVALID_ARGUMENT`, listing the known tasks. Prefix
exports (form 3, single and multi-task) are checked the same way.
"""

import numpy as np
import pytest
import tensorflow as tf
from tiny_causal_lms import build_lm

from tf_softprompt import hub
from tf_softprompt.export import export_causal_lm, read_info
from tf_softprompt.methods import prefix as prefix_lib
from tf_softprompt.serving import loaders

SEQUENCE_LENGTH = 13
TEXTS = ["the good film", "a", "", "the plot was very long and slow"]
MIXED = ["story", "poem", "poem", "story"]
MULTI = {"story": 3, "poem": 2}
SINGLE = {"story": 3}
BOTH, BAKED = (True, False), (True,)
CONFIGS = {
    # name: (kind, method, {task: prompt length}, reparameterised prefix,
    #        exports: baked (the default) and/or bake=False)
    "gpt2-multi": ("gpt2", "embedding", MULTI, False, BOTH),
    "gpt2-prepend-multi": ("gpt2", "prepend", MULTI, False, BAKED),
    "llama-multi": ("llama", "embedding", MULTI, False, BAKED),
    "llama-single": ("llama", "embedding", SINGLE, False, BOTH),
    "gemma-multi": ("gemma", "embedding", MULTI, False, BAKED),
    "llama-prefix-single": ("llama", "prefix", SINGLE, True, BAKED),
    "gpt2-prefix-multi": ("gpt2", "prefix", MULTI, False, BAKED),
    # The text after P past positions: baked, it must still start at P_k.
    "gpt2-past-prefix-multi": ("gpt2", "past_prefix", MULTI, False, BAKED),
}


def _text_positions(method, lengths):
    in_sequence = method in ("embedding", "prepend")
    reserved = max(lengths.values()) if in_sequence else 0
    return SEQUENCE_LENGTH - reserved


def _prompted(kind, method, length, seed, reparameterized):
    lm = build_lm(kind, SEQUENCE_LENGTH)
    if reparameterized:
        handle = hub.enable_prompt_tuning(
            lm,
            length,
            method=method,
            reparameterization=prefix_lib.Reparameterization(hidden_dim=8),
        )
        rng = np.random.default_rng(seed)
        for variable in handle.table.reparameterization_weights.values():
            variable.assign(rng.normal(0, 0.7, variable.shape).astype(np.float32))
    else:
        handle = hub.enable_prompt_tuning(lm, length, method=method)
        rng = np.random.default_rng(seed)
        shape = handle.prompt.shape
        handle.prompt.assign(rng.normal(0, 2, shape).astype(np.float32))
    return lm, handle


def _python_references(lm, handle, text_positions, tokens):
    """What the prompted model itself gives (prompt positions run)."""
    end = lm.preprocessor.tokenizer.end_token_id
    generated = handle.generate_step(
        {k: tf.constant(v) for k, v in tokens.items()}, stop_token_ids=[end]
    )
    mask = generated["padding_mask"].numpy().astype(np.int32)
    ids = np.where(mask > 0, generated["token_ids"].numpy(), 0).astype(np.int32)
    logits = handle.call(tokens).numpy()
    return {
        "text": lm.generate(TEXTS, max_length=text_positions),
        "token_ids": ids,
        "padding_mask": mask,
        "logits": logits,
    }


def _config(root, name):
    kind, method, lengths, reparameterized, exports = CONFIGS[name]
    text_positions = _text_positions(method, lengths)
    references, paths = {}, {}
    tokens = None
    for seed, (task, length) in enumerate(lengths.items()):
        lm, handle = _prompted(kind, method, length, seed, reparameterized)
        if tokens is None:
            features = lm.preprocessor.generate_preprocess(
                TEXTS, sequence_length=text_positions
            )
            tokens = {
                "token_ids": np.asarray(features["token_ids"], np.int32),
                "padding_mask": np.asarray(features["padding_mask"], np.int32),
            }
        references[task] = _python_references(lm, handle, text_positions, tokens)
        paths[task] = str(root / f"{name}-{task}.prompt.npz")
        handle.save_prompt(paths[task], task=task)
    dirs = {}
    for baked in exports:
        label = f"{name}/{'baked' if baked else 'unbaked'}"
        if len(lengths) == 1:  # the model's own prompt, as after training
            exported, _ = _prompted(kind, method, *lengths.values(), 0, reparameterized)
            kwargs = {"task": next(iter(lengths))}
        else:
            exported, kwargs = build_lm(kind, SEQUENCE_LENGTH), {"prompts": paths}
        dirs[label] = export_causal_lm(
            exported,
            root / label,
            1,
            sequence_length=SEQUENCE_LENGTH,
            bake=baked,
            **kwargs,
        )
    return {"references": references, "tokens": tokens, "dirs": dirs}


def _jobs(name, setup):
    tasks = list(CONFIGS[name][2])
    multi = len(tasks) > 1
    row_tasks = MIXED if multi else [tasks[0]] * len(TEXTS)
    text = {"text": np.array([t.encode() for t in TEXTS], dtype=object)}
    tokens = dict(setup["tokens"])
    if multi:
        text["task"] = np.array([t.encode() for t in row_tasks], dtype=object)
        tokens["task_id"] = np.array([tasks.index(t) for t in row_tasks], np.int32)
    jobs = {}
    for label, directory in setup["dirs"].items():
        for signature, inputs in (
            ("serving_default", text),
            ("predict_tokens", tokens),
            ("score_tokens", tokens),
        ):
            jobs[(label, signature)] = {
                "export_dir": directory,
                "signature": signature,
                "inputs": inputs,
            }
        if multi:
            unknown = np.array([b"essay", b"story"], dtype=object)
            jobs[(label, "unknown task")] = {
                "export_dir": directory,
                "signature": "serving_default",
                "inputs": {"text": text["text"][:2], "task": unknown},
            }
            jobs[(label, "task_id out of range")] = {
                "export_dir": directory,
                "signature": "predict_tokens",
                "inputs": {
                    **{k: v[:2] for k, v in tokens.items()},
                    "task_id": np.array([0, 2], np.int32),
                },
            }
    return row_tasks, jobs


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("baking")
    setups = {name: _config(root, name) for name in CONFIGS}
    rows, jobs = {}, {}
    for name, setup in setups.items():
        rows[name], config_jobs = _jobs(name, setup)
        jobs.update(config_jobs)
    keys = list(jobs)
    job_list = [jobs[k] for k in keys]
    binary = loaders.build_c_loader(str(root / "c_loader"))
    results = loaders.run_both_loaders(job_list, binary)
    return {
        "setups": setups,
        "rows": rows,
        "results": {loader: dict(zip(keys, r)) for loader, r in results.items()},
    }


def _outputs(served, loader, name, baked, signature):
    label = f"{name}/{'baked' if baked else 'unbaked'}"
    result = served["results"][loader][(label, signature)]
    assert "outputs" in result, (label, signature, result)
    return result["outputs"]


def _expected(served, name, key):
    """Each row's Python reference from its own task's model."""
    references = served["setups"][name]["references"]
    return [references[task][key][i] for i, task in enumerate(served["rows"][name])]


@pytest.mark.parametrize("loader", ["session", "c_api"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_served_outputs_equal_python_and_baked_equal_unbaked(served, loader, name):
    mask = served["setups"][name]["tokens"]["padding_mask"].astype(bool)
    exports = CONFIGS[name][4]
    for baked in exports:
        text = _outputs(served, loader, name, baked, "serving_default")["text"]
        assert [t.decode() for t in text] == _expected(served, name, "text")
        tokens = _outputs(served, loader, name, baked, "predict_tokens")
        for key in ("token_ids", "padding_mask"):
            np.testing.assert_array_equal(
                tokens[key], np.stack(_expected(served, name, key)), err_msg=key
            )
        logits = _outputs(served, loader, name, baked, "score_tokens")["logits"]
        np.testing.assert_allclose(
            logits[mask], np.stack(_expected(served, name, "logits"))[mask], atol=1e-5
        )
    if len(exports) < 2:
        return
    baked_logits = _outputs(served, loader, name, True, "score_tokens")["logits"]
    unbaked_logits = _outputs(served, loader, name, False, "score_tokens")["logits"]
    np.testing.assert_allclose(baked_logits[mask], unbaked_logits[mask], atol=1e-5)


@pytest.mark.parametrize("loader", ["session", "c_api"])
def test_unknown_tasks_are_invalid_argument_listing_the_known_ones(served, loader):
    for name, config in CONFIGS.items():
        if len(config[2]) < 2:
            continue
        for baked in config[4]:
            label = f"{name}/{'baked' if baked else 'unbaked'}"
            results = served["results"][loader]
            error = results[(label, "unknown task")]["error"]
            assert error["code"] == "INVALID_ARGUMENT", (label, error)
            assert "Known tasks: story, poem" in error["message"], label
            assert "essay" in error["message"], label
            error = results[(label, "task_id out of range")]["error"]
            assert error["code"] == "INVALID_ARGUMENT", (label, error)
            assert "task_id must lie in [0, 2)" in error["message"], label


def test_the_prompts_matter_so_equality_is_informative(served):
    for name in ("gpt2-multi", "llama-multi", "gemma-multi", "gpt2-prefix-multi"):
        references = served["setups"][name]["references"]
        story, poem = references["story"]["logits"], references["poem"]["logits"]
        assert np.abs(story - poem).max() > 1e-2, name


def test_export_info_says_what_was_baked_and_where_the_text_starts(served):
    for name, (_, method, lengths, _, exports) in CONFIGS.items():
        dirs = served["setups"][name]["dirs"]
        baked = read_info(dirs[f"{name}/baked"])["prompt_baking"]
        assert baked["baked"] is True, name
        takes_positions = method in ("embedding", "past_prefix")
        offsets = {t: n if takes_positions else 0 for t, n in lengths.items()}
        assert baked["text_position_offsets"] == offsets, name
        if False in exports:
            unbaked = read_info(dirs[f"{name}/unbaked"])["prompt_baking"]
            assert unbaked == {"baked": False, "reason": "disabled (bake=False)"}
    info = read_info(served["setups"]["llama-multi"]["dirs"]["llama-multi/baked"])
    # [L, 2, K * Pmax, kv_heads, head_dim]: 2 layers, 2 tasks x 3, GQA's 2 kv heads
    assert info["prompt_baking"]["keys_values_shape"] == [2, 2, 6, 2, 4]
    assert info["signatures"] == ["serving_default", "predict_tokens", "score_tokens"]


def test_text_starts_after_the_positions_each_method_takes():
    from tf_softprompt.hub import baking

    lengths = [3, 2]
    assert baking.text_position_offsets("embedding", lengths) == [3, 2]
    assert baking.text_position_offsets("past_prefix", lengths) == [3, 2]
    assert baking.text_position_offsets("prepend", lengths) == [0, 0]
    assert baking.text_position_offsets("prefix", lengths) == [0, 0]


def test_baked_text_beyond_the_position_limit_is_refused(tmp_path):
    """GPT-2 (32 learned positions): a baked 10-token prompt takes positions
    0..9, so 30 text positions after it would need 40."""
    lm, _ = _prompted("gpt2", "embedding", 10, 0, False)
    with pytest.raises(ValueError, match=r"starts at position 10.*40 positions"):
        export_causal_lm(lm, tmp_path / "long", 1, sequence_length=40)
    assert not (tmp_path / "long" / "1").exists()
