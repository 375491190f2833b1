"""Cost of a prompt-tuning embedding step: `PromptEmbedding` vs a dense mask.

Times one XLA-compiled training step of the embedding alone (forward, backward
and an SGD update of the trainable weights) at H=2048, P=20, batch 4×128, for
V=32,000 and V=256,000:

- ours: `tf_softprompt.PromptEmbedding`, a frozen `[V, H]` matrix plus a
  trainable `[P, H]` prompt table, looked up with two gathers and a select;
- naive: one trainable `[V + P, H]` matrix, frozen rows masked with
  `mask * W + (1 - mask) * tf.stop_gradient(W)`, then gathered. Its gradient,
  and its update, are dense `[V + P, H]`.

Each step is warmed up (compiled) first; the median of several repetitions is
reported. All four steps run interleaved, so background load affects them
alike and the ratios stay meaningful on a busy machine. The last printed line
is a JSON object with the raw milliseconds, `vocab_ratio` (ours at 256k /
ours at 32k, target <= 1.2) and `dense_mask_speedup` (naive / ours at 256k,
target >= 100).

Usage:
    python bench/embedding_cost.py [--repeats 10] [--ours-calls 5]

The 256k × 2048 float32 matrix is 2 GB; with all four steps alive and the
naive step's dense gradient, the peak is about 10 GB.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

import tf_softprompt  # noqa: E402

H, P, BATCH, LENGTH = 2048, 20, 4, 128
VOCAB_SIZES = (32_000, 256_000)
LEARNING_RATE = 1e-3


def _token_ids(vocab_size):
    """`[B, T]` ids: the P virtual ids first, then random real ids."""
    real = tf.random.uniform((BATCH, LENGTH - P), 0, vocab_size, dtype=tf.int32, seed=1)
    virtual = tf.broadcast_to(tf.range(vocab_size, vocab_size + P), (BATCH, P))
    return tf.concat([virtual, real], axis=1)


def _random_matrix(rows):
    # Made in-graph, so no 2 GB numpy copy is ever held.
    return tf.function(lambda: tf.random.normal((rows, H), seed=0))()


def ours_step(vocab_size):
    """A compiled train step of `PromptEmbedding` and its cleanup."""
    layer = tf_softprompt.PromptEmbedding(P, input_dim=vocab_size, output_dim=H)
    layer.embedding.build((None, None))
    layer.embedding.embeddings.assign(_random_matrix(vocab_size))
    layer.build((None, None))
    cotangent = tf.random.normal((BATCH, LENGTH, H), seed=2)

    @tf.function(jit_compile=True)
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids) * cotangent)
        (grad,) = tape.gradient(loss, layer.trainable_variables)
        layer.prompt.assign_sub(LEARNING_RATE * grad)
        return loss

    return step, layer


def naive_step(vocab_size):
    """A compiled train step of the dense-mask form."""
    table = tf.Variable(_random_matrix(vocab_size + P), trainable=True)
    rows = tf.range(vocab_size + P)[:, None]
    mask = tf.cast(rows >= vocab_size, tf.float32)
    cotangent = tf.random.normal((BATCH, LENGTH, H), seed=2)

    @tf.function(jit_compile=True)
    def step(ids):
        with tf.GradientTape() as tape:
            masked = mask * table + (1.0 - mask) * tf.stop_gradient(table)
            loss = tf.reduce_sum(tf.gather(masked, ids) * cotangent)
        grad = tape.gradient(loss, table)
        table.assign_sub(LEARNING_RATE * grad)
        return loss

    return step, table


def median_ms(steps, repeats, warmup=2):
    """Median milliseconds of each `(step, ids, calls)`, interleaved.

    Every repetition runs each step `calls` times in turn, so background load
    on the machine slows all of them alike and their ratios stay meaningful.
    """
    for step, ids, _ in steps:
        for _ in range(warmup):
            step(ids).numpy()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for (step, ids, calls), bucket in zip(steps, times):
            for _ in range(calls):
                start = time.perf_counter()
                step(ids).numpy()
                bucket.append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(bucket) for bucket in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ours-calls", type=int, default=5)
    args = parser.parse_args()

    results = {"hidden_dim": H, "num_prompt_tokens": P, "batch": [BATCH, LENGTH]}
    steps, names = [], []
    for vocab_size in VOCAB_SIZES:
        tag = f"{vocab_size // 1000}k"
        ids = _token_ids(vocab_size)
        steps.append((ours_step(vocab_size)[0], ids, args.ours_calls))
        steps.append((naive_step(vocab_size)[0], ids, 1))
        names += [f"ours_ms_{tag}", f"naive_ms_{tag}"]
    for name, ms in zip(names, median_ms(steps, args.repeats)):
        results[name] = ms
        print(f"{name}: {ms:.2f}", flush=True)
    results["vocab_ratio"] = results["ours_ms_256k"] / results["ours_ms_32k"]
    results["dense_mask_speedup"] = results["naive_ms_256k"] / results["ours_ms_256k"]
    results = {
        k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
