"""Per-example prompts in `CausalLM.generate()` itself.

One model holds two tasks' prompts (lengths 3 and 2) in one table; a mixed
batch generated with `lm.generate({"prompts": texts, "tasks": names})` (or,
without a preprocessor, `prompt_ids`/`prompt_mask` next to the token ids)
must give each row what a model holding only that row's task's prompt
generates (greedy), for forms 1 and 3.
"""

import numpy as np
import pytest
from tiny_causal_lms import build_lm
from tiny_models import V

from tf_softprompt import hub

SEQUENCE_LENGTH = 12
# Texts after which these tiny models' greedy continuations depend on the
# prompt (after some, e.g. "a", a random model ends in the same loop
# whatever the prompt, and a wrong prompt would go unseen).
TEXTS = ["the good film", "very slow", "good story", "q"]
TASKS = ["story", "poem", "poem", "story"]
LENGTHS = {"story": 3, "poem": 2}
PMAX = 3


def _prompt_shape(kind, method):
    """`(shape of n tokens, token axis)` of the method's prompt array."""
    lm = build_lm(kind, SEQUENCE_LENGTH)
    handle = hub.enable_prompt_tuning(lm, 1, method=method)
    shape = list(handle.prompt_values().shape)
    axis = handle.method.token_axis

    def of(n):
        return tuple(n if i == axis else d for i, d in enumerate(shape))

    return of, axis


@pytest.fixture(scope="module", params=[("gpt2", "embedding"), ("llama", "prefix")])
def models(request):
    kind, method = request.param
    of, axis = _prompt_shape(kind, method)
    rng = np.random.default_rng(0)
    prompts = {
        t: rng.normal(0, 2, of(n)).astype(np.float32) for t, n in LENGTHS.items()
    }
    singles = {}
    for task, values in prompts.items():
        lm = build_lm(kind, SEQUENCE_LENGTH)
        single = hub.enable_prompt_tuning(lm, LENGTHS[task], method=method)
        single.assign_prompt(values)
        singles[task] = lm
    multi = build_lm(kind, SEQUENCE_LENGTH)
    handle = hub.enable_prompt_tuning(multi, 2 * PMAX, method=method)
    table = np.zeros(of(2 * PMAX), np.float32)
    for k, (task, values) in enumerate(prompts.items()):
        index = [slice(None)] * table.ndim
        index[axis] = slice(k * PMAX, k * PMAX + LENGTHS[task])
        table[tuple(index)] = values
        handle.add_task(task, range(k * PMAX, k * PMAX + LENGTHS[task]))
    handle.assign_prompt(table)
    return singles, multi, handle


def test_named_tasks_in_generate_equal_per_task_models(models):
    singles, multi, _ = models
    got = multi.generate({"prompts": TEXTS, "tasks": TASKS})
    want = {task: lm.generate(TEXTS) for task, lm in singles.items()}
    for i in range(len(TEXTS)):  # every row tells the two prompts apart
        assert want["story"][i] != want["poem"][i], TEXTS[i]
    for i, task in enumerate(TASKS):
        assert got[i] == want[task][i], (i, task)
    # One string and one task name, as `generate` takes a single prompt.
    assert multi.generate({"prompts": TEXTS[1], "tasks": "poem"}) == want["poem"][1]


def test_prompt_ids_next_to_token_ids_without_a_preprocessor(models):
    singles, multi, handle = models
    preprocessor = multi.preprocessor
    tokens = preprocessor.generate_preprocess(TEXTS, sequence_length=SEQUENCE_LENGTH)
    tokens = {k: np.asarray(v) for k, v in tokens.items()}
    prompt_ids, prompt_mask = handle.task_selection(TASKS)
    np.testing.assert_array_equal(prompt_ids[1], [V + 3, V + 4, V])
    np.testing.assert_array_equal(prompt_mask[1], [True, True, False])
    multi.preprocessor = None
    try:
        got = multi.generate(
            {**tokens, "prompt_ids": prompt_ids, "prompt_mask": prompt_mask},
            stop_token_ids=None,
        )
    finally:
        multi.preprocessor = preprocessor
    for task, lm in singles.items():
        lm.preprocessor, saved = None, lm.preprocessor
        try:
            want = lm.generate(dict(tokens), stop_token_ids=None)
        finally:
            lm.preprocessor = saved
        for i in np.flatnonzero(np.array(TASKS) == task):
            np.testing.assert_array_equal(got["token_ids"][i], want["token_ids"][i])


def test_bad_selections_are_refused_naming_the_fix(models):
    _, multi, handle = models
    with pytest.raises(ValueError, match=r"Unknown task\(s\) \['essay'\]. Known"):
        multi.generate({"prompts": TEXTS[:1], "tasks": ["essay"]})
    with pytest.raises(ValueError, match="one row per example"):
        multi.generate({"prompts": TEXTS[:2], "tasks": ["poem"]})
    with pytest.raises(ValueError, match="not both"):
        multi.generate({"prompts": TEXTS[:1], "tasks": ["poem"], "prompt_ids": [[V]]})
    with pytest.raises(ValueError, match=r"each in \[0, 6\)"):
        handle.add_task("wide", range(4, 8))
    assert handle.tasks == {"story": (0, 1, 2), "poem": (3, 4)}
