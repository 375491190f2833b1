"""Causal-LM prompt tuning vs full fine-tuning, on a GPT-2 pretrained here.

No pretrained causal LM or tokenizer can be downloaded here, so the
benchmark makes its own:

1. a byte-level BPE (GPT-2's byte alphabet and pre-tokenizer, words with
   their leading space) learnt in plain Python from the word counts of
   `../shared/data/sst2/train.tsv`, with `<|endoftext|>` as the last id;
2. a small `GPT2CausalLM` (4 layers, hidden 256 by default, dropout 0)
   pretrained on those training sentences as plain text (packed into
   windows of `--sequence-length` tokens, separated by `<|endoftext|>`)
   for `--pretrain-steps` Adam steps (linear warm-up, cosine decay), and
   saved with `save_to_preset` as a keras-hub preset directory, which
   `keras_hub.models.CausalLM.from_preset` must reload. The preset is
   cached in `--work-dir` (one directory per tokenizer/model/budget), so a
   rerun with the same `--work-dir` skips steps 1 and 2.

It then tunes that model on SST-2 as prompt/completion pairs, prompt
`"Review: {sentence} Sentiment:"`, completion `" positive"` or
`" negative"` (JSONL files, `prompt`/`completion` keys): `--train-size`
seeded rows of `train.tsv` (pretraining saw these sentences, never their
labels) and `--eval-size` seeded rows of `validation.tsv` (disjoint).
Three ways, on the same rows, batch size, sequence length and number of
steps, with the same loss (the completion tokens and the end token):

- `prefix` and `embedding`: `tf_softprompt.training.workflow.train` with
  `task="causal-lm"`, exactly what `tf-softprompt train --task causal-lm`
  runs (the `prefix` run also evaluates the frozen model without a prompt,
  the baseline);
- `full`: every weight of the same pretrained model trainable, through
  the same task's data and loss (`tasks.create(...)`, `Trainer`), Adam at
  `--full-learning-rate`;
- and, as a diagnostic, `frozen_linear_probe`: a logistic regression on
  the frozen model's last hidden state at the prompt's end (what a prompt
  could at best read out of the frozen layers), with the held-out
  majority-class accuracy next to it.

Prints progress on stderr and one JSON line on stdout: for each way its
held-out `exact_match` (greedy completion equal to the label word),
`completion_loss` (nats per completion token), `train_seconds`, `steps`,
`trainable_parameters` and `median_step_seconds`; the baseline's
`exact_match` and `completion_loss`; `tokens_per_second_ratio`, prefix
training tokens per second over full fine-tuning's, measured in this run
from the median time between consecutive steps (a callback after each
step; the first epoch's first `WARMUP_STEPS` steps, which trace the
function, are left out; the batch and sequence length are the same, so
this is full's median step time over prefix's); the pretraining figures;
the sizes; and the issue's target.

Usage:
    python bench/causal_lm.py [--work-dir DIR] [--pretrain-steps 1500]
        [--train-size 4000] [--eval-size 872] [--epochs 2]
        [--learning-rate 0.03] [--full-learning-rate 1e-4]
        [--prompt-length 20] [--methods prefix embedding full] ...
"""

import argparse
import collections
import heapq
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(REPO_ROOT, "..", "shared", "data", "sst2")
END_TOKEN = "<|endoftext|>"
# GPT-2's pre-tokenizer (the `regex` module's syntax).
GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
PROMPT = "Review: {sentence} Sentiment:"
COMPLETIONS = {0: " negative", 1: " positive"}
WARMUP_STEPS = 5
METHODS = ("prefix", "embedding", "full")


def say(line):
    print(f"[causal_lm] {line}", file=sys.stderr, flush=True)


# --- data -------------------------------------------------------------------


def read_rows(path):
    """`[(sentence, label)]` of a GLUE-style SST-2 TSV, sentences stripped."""
    with open(path, encoding="utf-8") as f:
        header, *lines = f.read().splitlines()
    assert header.split("\t") == ["sentence", "label"], header
    rows = []
    for line in lines:
        sentence, label = line.rsplit("\t", 1)
        rows.append((sentence.strip(), int(label)))
    return rows


def subset(rows, size, seed):
    """A seeded random subset of `rows` in file order (all if `size` is 0)."""
    if not size or size >= len(rows):
        return rows
    picked = np.random.default_rng(seed).choice(len(rows), size, replace=False)
    return [rows[i] for i in sorted(picked)]


def write_pairs(rows, path):
    """Prompt/completion JSONL of labelled sentences."""
    with open(path, "w", encoding="utf-8") as f:
        for sentence, label in rows:
            record = {
                "prompt": PROMPT.format(sentence=sentence),
                "completion": COMPLETIONS[label],
            }
            f.write(json.dumps(record) + "\n")
    return path


# --- the tokenizer ----------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's reversible map `{byte: character}`, in GPT-2's id order
    (keras-hub's own table, which its `GPT2Tokenizer` inverts)."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import (
        bytes_to_unicode as byte_table,
    )

    byte_values, characters = byte_table()
    return {value[0]: character for value, character in zip(byte_values, characters)}


def word_counts(texts):
    """Counts of GPT-2's pre-tokenized words, in byte-level characters."""
    import regex

    encoder = bytes_to_unicode()
    pattern = regex.compile(GPT2_PATTERN)
    counts = collections.Counter()
    for text in texts:
        for word in pattern.findall(text):
            counts["".join(encoder[b] for b in word.encode("utf-8"))] += 1
    return counts


def learn_bpe(counts, num_merges):
    """Byte-pair merges learnt from word counts, most frequent pair first
    (ties: the smaller pair), updated incrementally.

    Returns:
        `(vocabulary, merges)`: `{token: id}` with the 256 byte characters
        first (GPT-2's order), then each new merge result, then
        `<|endoftext|>`; and the merges as `"left right"` strings.
    """
    words = [list(word) for word in counts]
    freqs = list(counts.values())
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    merges = []
    while heap and len(merges) < num_merges:
        count, pair = heapq.heappop(heap)
        if -count != pairs.get(pair, 0) or count == 0:
            continue  # a stale entry
        merges.append(pair)
        joined = pair[0] + pair[1]
        changed = set()
        for i in list(where[pair]):
            word = words[i]
            for old in zip(word, word[1:]):
                pairs[old] -= freqs[i]
                changed.add(old)
            merged, k = [], 0
            while k < len(word):
                if k + 1 < len(word) and (word[k], word[k + 1]) == pair:
                    merged.append(joined)
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            words[i] = merged
            for new in zip(merged, merged[1:]):
                pairs[new] += freqs[i]
                where[new].add(i)
                changed.add(new)
        for changed_pair in changed:
            if pairs[changed_pair] > 0:
                heapq.heappush(heap, (-pairs[changed_pair], changed_pair))
            else:
                pairs.pop(changed_pair, None)
                where.pop(changed_pair, None)
    tokens = list(bytes_to_unicode().values())
    seen = set(tokens)
    for left, right in merges:
        if left + right not in seen:
            seen.add(left + right)
            tokens.append(left + right)
    tokens.append(END_TOKEN)
    vocabulary = {token: index for index, token in enumerate(tokens)}
    return vocabulary, [f"{left} {right}" for left, right in merges]


# --- pretraining ------------------------------------------------------------


def pretrain_dir(args):
    name = (
        f"gpt2-bpe{args.merges}-L{args.layers}-H{args.hidden}-A{args.heads}"
        f"-F{args.intermediate}-T{args.sequence_length}-B{args.pretrain_batch_size}"
        f"-lr{args.pretrain_learning_rate:g}-steps{args.pretrain_steps}-seed{args.seed}"
    )
    return os.path.join(args.work_dir, name)


def packed_windows(tokenizer, texts, sequence_length, end_id):
    """The texts' tokens, each text after `<|endoftext|>`, concatenated and
    cut into `[N, sequence_length + 1]` windows."""
    import tensorflow as tf

    stream = []
    for begin in range(0, len(texts), 4096):
        ids = tokenizer(tf.constant(texts[begin : begin + 4096]))
        for row in ids.to_list() if hasattr(ids, "to_list") else ids:
            stream.append(end_id)
            stream.extend(row)
    width = sequence_length + 1
    count = len(stream) // width
    return np.asarray(stream[: count * width], np.int32).reshape(count, width)


def pretrain(args, train_texts, eval_texts):
    """The pretrained preset directory and its figures (cached)."""
    path = pretrain_dir(args)
    record = os.path.join(path, "pretrain.json")
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            figures = json.load(f)
        say(f"Reusing the pretrained model in {path}")
        return path, {**figures, "cached": True}

    import keras
    import keras_hub
    import tensorflow as tf

    started = time.perf_counter()
    vocabulary, merges = learn_bpe(word_counts(train_texts), args.merges)
    bpe_seconds = time.perf_counter() - started
    say(
        f"BPE: {len(merges)} merges, vocabulary {len(vocabulary)} ({bpe_seconds:.1f} s)"
    )
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    end_id = tokenizer.end_token_id
    assert end_id == len(vocabulary) - 1, end_id
    train = packed_windows(tokenizer, train_texts, args.sequence_length, end_id)
    held = packed_windows(tokenizer, eval_texts, args.sequence_length, end_id)
    tokens_per_word = train.size / sum(len(t.split()) for t in train_texts)
    say(
        f"Pretraining data: {train.shape[0]} windows of {args.sequence_length} "
        f"tokens ({tokens_per_word:.2f} tokens per word), {held.shape[0]} held out"
    )

    keras.utils.set_random_seed(args.seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocabulary),
        num_layers=args.layers,
        num_heads=args.heads,
        hidden_dim=args.hidden,
        intermediate_dim=args.intermediate,
        dropout=0.0,
        max_sequence_length=args.max_sequence_length,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=args.pretrain_steps - args.pretrain_steps // 20,
        warmup_target=args.pretrain_learning_rate,
        warmup_steps=args.pretrain_steps // 20,
        alpha=0.1,
    )
    lm.compile(
        optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )

    def batches(windows, repeat):
        features = {
            "token_ids": windows[:, :-1],
            "padding_mask": np.ones_like(windows[:, :-1], bool),
        }
        dataset = tf.data.Dataset.from_tensor_slices((features, windows[:, 1:]))
        if repeat:
            dataset = dataset.repeat().shuffle(8192, seed=args.seed)
        return dataset.batch(args.pretrain_batch_size, drop_remainder=repeat)

    chunks = 10
    per_chunk = -(-args.pretrain_steps // chunks)

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            say(
                f"pretraining step {min((epoch + 1) * per_chunk, args.pretrain_steps)}"
                f"/{args.pretrain_steps}: loss {logs['loss']:.4f} "
                f"({time.perf_counter() - fit_started:.0f} s)"
            )

    fit_started = time.perf_counter()
    history = lm.fit(
        batches(train, repeat=True).take(args.pretrain_steps),
        epochs=chunks,
        steps_per_epoch=per_chunk,
        verbose=0,
        callbacks=[Report()],
    )
    seconds = time.perf_counter() - fit_started
    held_loss = float(lm.evaluate(batches(held, repeat=False), verbose=0))
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=args.sequence_length
    )
    saved = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    partial = path + ".partial"
    saved.save_to_preset(partial)
    reloaded = keras_hub.models.CausalLM.from_preset(partial)
    probe = {
        "token_ids": train[:2, :-1],
        "padding_mask": np.ones_like(train[:2, :-1], bool),
    }
    difference = float(np.max(np.abs(reloaded(probe) - lm(probe))))
    assert difference < 1e-4, f"The reloaded preset differs by {difference}."
    figures = {
        "steps": args.pretrain_steps,
        "train_seconds": round(seconds, 1),
        "final_loss": round(float(history.history["loss"][-1]), 4),
        "held_out_loss": round(held_loss, 4),
        "held_out_perplexity": round(float(np.exp(held_loss)), 2),
        "windows": int(train.shape[0]),
        "tokens": int(train.size),
        "epochs_of_data": round(
            args.pretrain_steps * args.pretrain_batch_size / train.shape[0], 2
        ),
        "vocabulary_size": len(vocabulary),
        "merges": len(merges),
        "bpe_seconds": round(bpe_seconds, 1),
        "parameters": int(backbone.count_params()),
        "reload_max_difference": difference,
    }
    with open(os.path.join(partial, "pretrain.json"), "w", encoding="utf-8") as f:
        json.dump(figures, f, indent=2)
    os.replace(partial, path)
    say(
        f"Pretrained in {seconds:.0f} s: loss {figures['final_loss']}, held-out "
        f"{figures['held_out_loss']} (perplexity {figures['held_out_perplexity']}); "
        f"saved to {path}"
    )
    return path, {**figures, "cached": False}


# --- tuning -----------------------------------------------------------------


class StepTimes:
    """A `fit` callback `fn(step, loss)` recording when each step ended."""

    def __init__(self):
        self.times = []

    def __call__(self, step, loss):
        self.times.append(time.perf_counter())

    def median_step_seconds(self):
        gaps = np.diff(self.times[WARMUP_STEPS:])
        return float(np.median(gaps)) if len(gaps) else None


def config(args, out, preset, train_path, eval_path, method, baseline=False):
    from tf_softprompt.training import config as config_lib

    return config_lib.TrainConfig(
        out=out,
        task="causal-lm",
        model=preset,
        data=train_path,
        eval_data=eval_path,
        method=method,
        prompt_length=args.prompt_length,
        init=args.init,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        sequence_length=args.sequence_length,
        truncate_prompt=True,
        seed=args.seed,
        baseline=baseline,
    )


def prompt_tuning(args, runs, preset, train_path, eval_path, method, baseline):
    """Figures of `tf-softprompt train --task causal-lm --method METHOD`."""
    from tf_softprompt.training import workflow

    cfg = config(
        args, os.path.join(runs, method), preset, train_path, eval_path, method,
        baseline,
    )  # fmt: skip
    times = StepTimes()
    metrics = workflow.train(cfg, verbose=0, callbacks=[times], report=say)
    result = {
        "exact_match": metrics["exact_match"],
        "completion_loss": round(metrics["completion_loss"], 4),
        "train_seconds": metrics["train_seconds"],
        "steps": metrics["steps"],
        "trainable_parameters": metrics["trainable_parameters"],
        "median_step_seconds": round(times.median_step_seconds(), 4),
        "final_loss": round(metrics["final_loss"], 4),
        "learning_rate": cfg.learning_rate,
        "init": cfg.init,
    }
    for key in ("baseline_exact_match", "baseline_completion_loss"):
        if key in metrics:
            result[key] = metrics[key]
    return result, metrics


def full_fine_tuning(args, runs, preset, train_path, eval_path):
    """Every weight of the same model, the same task data and loss."""
    from tf_softprompt import checkpoints
    from tf_softprompt.training import Trainer, tasks

    cfg = config(
        args, os.path.join(runs, "full"), preset, train_path, eval_path, "prefix"
    )
    task = tasks.create(cfg, preset)
    task.prepare()

    def build():
        lm, _ = checkpoints.load_causal_lm(
            preset, cfg.sequence_length, task.preprocessor
        )
        return lm

    trainer = Trainer(
        build,
        learning_rate=args.full_learning_rate,
        global_batch_size=cfg.batch_size,
        seed=cfg.seed,
        loss_fn=task.loss_fn,
        verbose=0,
    )
    times = StepTimes()
    started = time.perf_counter()
    fitted = trainer.fit(
        task.dataset,
        epochs=cfg.epochs,
        steps_per_epoch=task.steps_per_epoch,
        callbacks=[times],
    )
    seconds = time.perf_counter() - started
    figures = task.evaluate(trainer.model)
    return {
        "exact_match": figures["exact_match"],
        "completion_loss": round(figures["completion_loss"], 4),
        "train_seconds": round(seconds, 2),
        "steps": fitted["steps"],
        "trainable_parameters": int(
            sum(int(v.numpy().size) for v in trainer.variables)
        ),
        "median_step_seconds": round(times.median_step_seconds(), 4),
        "final_loss": round(fitted["loss"], 4),
        "learning_rate": args.full_learning_rate,
    }


def linear_probe(preset, train_path, eval_path, sequence_length, steps=3000):
    """How much sentiment the frozen model carries where it must answer: a
    logistic regression (numpy, full-batch gradient descent, L2 1e-3) on the
    final hidden state at each prompt's last position, fit on the training
    pairs, scored on the held-out ones. Prompt tuning can only steer what the
    frozen layers compute, so this bounds what a prompt can read out."""
    import keras_hub

    lm = keras_hub.models.CausalLM.from_preset(preset)

    def features(path):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        hidden, labels = [], []
        for begin in range(0, len(rows), 64):
            chunk = rows[begin : begin + 64]
            x = lm.preprocessor.generate_preprocess(
                [r["prompt"] for r in chunk], sequence_length=sequence_length
            )
            states = lm.backbone(
                {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
            ).numpy()
            last = np.asarray(x["padding_mask"]).sum(axis=1) - 1
            hidden.append(states[np.arange(len(chunk)), last])
            labels += [r["completion"] == COMPLETIONS[1] for r in chunk]
        return np.concatenate(hidden), np.asarray(labels, np.float64)

    train_x, train_y = features(train_path)
    eval_x, eval_y = features(eval_path)
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    train_x, eval_x = (train_x - mean) / scale, (eval_x - mean) / scale
    weights, bias = np.zeros(train_x.shape[1]), 0.0
    for _ in range(steps):
        error = 1.0 / (1.0 + np.exp(-(train_x @ weights + bias))) - train_y
        weights -= 0.1 * (train_x.T @ error / len(train_y) + 1e-3 * weights)
        bias -= 0.1 * error.mean()

    def accuracy(x, y):
        return round(float((((x @ weights + bias) > 0) == (y > 0.5)).mean()), 4)

    majority = max(eval_y.mean(), 1.0 - eval_y.mean())
    return {
        "train_accuracy": accuracy(train_x, train_y),
        "eval_accuracy": accuracy(eval_x, eval_y),
        "eval_majority_accuracy": round(float(majority), 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument(
        "--work-dir", default=None, help="pretrained-model cache and runs (temp)"
    )
    size = parser.add_argument_group("the pretrained model")
    size.add_argument("--merges", type=int, default=4000, help="BPE merges")
    size.add_argument("--layers", type=int, default=4)
    size.add_argument("--hidden", type=int, default=256)
    size.add_argument("--heads", type=int, default=4)
    size.add_argument("--intermediate", type=int, default=1024)
    size.add_argument("--max-sequence-length", type=int, default=128)
    size.add_argument("--pretrain-steps", type=int, default=1500)
    size.add_argument("--pretrain-batch-size", type=int, default=32)
    size.add_argument("--pretrain-learning-rate", type=float, default=1e-3)
    tune = parser.add_argument_group("tuning")
    tune.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    tune.add_argument("--train-size", type=int, default=4000)
    tune.add_argument("--eval-size", type=int, default=872, help="0: all rows")
    tune.add_argument("--epochs", type=int, default=2)
    tune.add_argument("--batch-size", type=int, default=16)
    tune.add_argument("--sequence-length", type=int, default=64)
    tune.add_argument("--prompt-length", type=int, default=20)
    tune.add_argument("--init", default="vocab", choices=("vocab", "uniform"))
    tune.add_argument(
        "--learning-rate", type=float, default=0.03, help="prefix and embedding"
    )
    tune.add_argument("--full-learning-rate", type=float, default=1e-4)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument(
        "--no-probe", dest="probe", action="store_false",
        help="skip the linear probe of the frozen model",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    started = time.perf_counter()
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="causal-lm-")
    os.makedirs(args.work_dir, exist_ok=True)
    train_rows = read_rows(os.path.join(args.data_dir, "train.tsv"))
    eval_rows = read_rows(os.path.join(args.data_dir, "validation.tsv"))
    preset, pretraining = pretrain(
        args, [s for s, _ in train_rows], [s for s, _ in eval_rows]
    )

    runs = tempfile.mkdtemp(prefix="runs-", dir=args.work_dir)
    tune_rows = subset(train_rows, args.train_size, args.seed)
    held_rows = subset(eval_rows, args.eval_size, args.seed)
    train_path = write_pairs(tune_rows, os.path.join(runs, "train.jsonl"))
    eval_path = write_pairs(held_rows, os.path.join(runs, "validation.jsonl"))
    results, baseline = {}, {}
    if args.probe:
        say("Linear probe of the frozen model")
        results["frozen_linear_probe"] = linear_probe(
            preset, train_path, eval_path, args.sequence_length
        )
    for method in args.methods:
        say(f"Tuning: {method}")
        if method == "full":
            results[method] = full_fine_tuning(
                args, runs, preset, train_path, eval_path
            )
        else:
            first = not baseline
            results[method], metrics = prompt_tuning(
                args, runs, preset, train_path, eval_path, method, baseline=first
            )
            if first:
                baseline = {
                    "exact_match": results[method].pop("baseline_exact_match"),
                    "completion_loss": round(
                        results[method].pop("baseline_completion_loss"), 4
                    ),
                }
                truncated = metrics.get("truncated_prompts")
                if truncated is not None:
                    baseline["truncated_prompts"] = truncated
        say(f"{method}: {json.dumps(results[method])}")
    result = {**results, "baseline": baseline}
    if "prefix" in results and "full" in results:
        result["tokens_per_second_ratio"] = round(
            results["full"]["median_step_seconds"]
            / results["prefix"]["median_step_seconds"],
            3,
        )
        result["prefix_exact_match_minus_full"] = round(
            results["prefix"]["exact_match"] - results["full"]["exact_match"], 4
        )
    result.update(
        pretraining=pretraining,
        sizes={
            "train_size": len(tune_rows),
            "eval_size": len(held_rows),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "sequence_length": args.sequence_length,
            "prompt_length": args.prompt_length,
            "layers": args.layers,
            "hidden": args.hidden,
            "heads": args.heads,
            "intermediate": args.intermediate,
            "max_sequence_length": args.max_sequence_length,
            "pretrain_batch_size": args.pretrain_batch_size,
            "seed": args.seed,
        },
        timing=(
            "tokens_per_second_ratio: full's median step time over prefix's "
            f"(the same batch and sequence length), steps after the first "
            f"{WARMUP_STEPS} (tracing) of each run"
        ),
        targets={"prefix_exact_match": "within 2 points of full fine-tuning"},
        preset=preset,
        runs=runs,
        total_seconds=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
