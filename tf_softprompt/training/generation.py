"""Generating with a causal LM's generate loop: greedy completions of
token prompts (for `exact_match`) and texts (`tf-softprompt generate`).

Both run `CausalLM.make_generate_function` (a prompt-tuned model's own,
so the prompt is in every step) with the sampler set for the call and put
back after it.

Example:
```python
for record in generate_texts(trained, ["The movie was"], max_length=32):
    record["completion"]
```
"""

import keras_hub
import numpy as np
import tensorflow as tf

from tf_softprompt.training.completion_data import (
    decode,
    decode_strings,
    detokenize_generated,
    in_graph,
    special_tokens,
    stop_token_ids,
    tokenize,
)


def greedy_completions(model, preprocessor, encoded, batch_size):
    """Greedy generation from each row's prompt, stopped at an end token or
    at the completion's token count: the generated token lists."""
    previous = model.sampler
    model.sampler = keras_hub.samplers.get("greedy")
    model.generate_function = None
    try:
        generate = model.make_generate_function()
        stops = stop_token_ids(preprocessor)
        _, _, pad = special_tokens(preprocessor)
        width = max(
            len(p) + len(c) for p, c in zip(encoded.prompt_ids, encoded.completion_ids)
        )
        outputs = []
        for begin in range(0, len(encoded), batch_size):
            prompts = encoded.prompt_ids[begin : begin + batch_size]
            token_ids = np.full((len(prompts), width), pad, np.int32)
            mask = np.zeros((len(prompts), width), bool)
            for i, ids in enumerate(prompts):
                token_ids[i, : len(ids)] = ids
                mask[i, : len(ids)] = True
            inputs = {"token_ids": tf.constant(token_ids), "padding_mask": mask}
            result = generate(inputs, stop_token_ids=stops)
            generated = np.asarray(result["token_ids"])
            for i, ids in enumerate(prompts):
                budget = len(encoded.completion_ids[begin + i])
                row = list(generated[i, len(ids) : len(ids) + budget])
                cut = [k for k, t in enumerate(row) if t in stops]
                outputs.append(row[: cut[0]] if cut else row)
        return outputs
    finally:
        model.sampler = previous
        model.generate_function = None


SAMPLERS = {
    "greedy": lambda seed: keras_hub.samplers.GreedySampler(),
    "top_k": lambda seed: keras_hub.samplers.TopKSampler(seed=seed),
    "top_p": lambda seed: keras_hub.samplers.TopPSampler(seed=seed),
}


def generate_texts(trained, texts, max_length, sampler="greedy", seed=0, batch_size=16):
    """Generate from a causal-LM run: one record per text, with the prompt,
    the generated `completion` and the whole `text` (prompt and
    completion, decoded together as `CausalLM.generate` and the served
    export return it).

    Args:
        trained: a `run_dir.TrainedCausalLM`.
        texts: list of prompts.
        max_length: positions of prompt plus completion.
        sampler: `"greedy"`, `"top_k"` or `"top_p"` (keras-hub's defaults).
        seed: the sampler's seed.
        batch_size: prompts per generation call.
    """
    model, preprocessor = trained.model, trained.preprocessor
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}. Use one of {list(SAMPLERS)}.")
    previous = model.sampler
    model.sampler = SAMPLERS[sampler](seed)
    model.generate_function = None
    try:
        generate = model.make_generate_function()
        stops = stop_token_ids(preprocessor)
        detokenize = in_graph(
            lambda ids, mask: detokenize_generated(preprocessor.tokenizer, ids, mask)
        )
        for begin in range(0, len(texts), batch_size):
            batch = list(texts[begin : begin + batch_size])
            inputs = preprocessor.generate_preprocess(
                tf.constant(batch), sequence_length=max_length
            )
            outputs = generate(inputs, stop_token_ids=stops)
            full = decode_strings(
                detokenize(outputs["token_ids"], outputs["padding_mask"])
            )
            new = np.asarray(outputs["padding_mask"]) & ~np.asarray(
                inputs["padding_mask"]
            )
            ids = np.asarray(outputs["token_ids"])
            generated = [
                [int(t) for t in row[keep] if t not in stops]
                for row, keep in zip(ids, new)
            ]
            completions = decode(preprocessor.tokenizer, generated)
            for prompt, whole, completion in zip(batch, full, completions):
                yield {"prompt": prompt, "completion": completion, "text": whole}
    finally:
        model.sampler = previous
        model.generate_function = None


def prompts_filling(preprocessor, texts, max_length):
    """How many prompts leave no position to generate in `max_length`
    (their tokens, with the start token, fill it)."""
    start, _, _ = special_tokens(preprocessor)
    extra = len(start)
    return sum(
        len(ids) + extra >= max_length
        for ids in tokenize(preprocessor.tokenizer, texts)
    )
