"""The SST-2 study: which settings move prefix (and prompt) tuning's accuracy.

Runs `bench/sst2.py` once per variant (each in its own process, one after
another) on the issue's budget: 4,000 training rows, 2,000 validation rows,
2 epochs, batch 16, sequence 64, P=20 unless the variant changes it, no
baseline. Prints one JSON line per variant as it finishes, then one JSON
line last with `{variant: {accuracy, train_seconds, ...}}`.

Usage:
    python bench/sst2_study.py [--variants NAME ...] [--train-size 4000]
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET = [
    "--epochs", "2", "--batch-size", "16", "--sequence-length", "64",
    "--no-baseline",
]  # fmt: skip
VARIANTS = {
    "prefix": ["--method", "prefix"],
    "embedding": ["--method", "embedding"],
    "prefix-lr-3e-3": ["--method", "prefix", "--learning-rate", "0.003"],
    "prefix-lr-3e-2": ["--method", "prefix", "--learning-rate", "0.03"],
    "prefix-init-vocab": ["--method", "prefix", "--init", "vocab"],
    "prefix-init-uniform": ["--method", "prefix", "--init", "uniform"],
    "prefix-p10": ["--method", "prefix", "--prompt-length", "10"],
    "prefix-p40": ["--method", "prefix", "--prompt-length", "40"],
    "prefix-reparameterize": ["--method", "prefix", "--reparameterize", "512"],
    "prefix-no-base-dropout": ["--method", "prefix", "--base-dropout", "0"],
    "embedding-no-base-dropout": ["--method", "embedding", "--base-dropout", "0"],
    "prefix-bf16": ["--method", "prefix", "--precision", "mixed_bfloat16"],
    "embedding-bf16": ["--method", "embedding", "--precision", "mixed_bfloat16"],
    "prefix-no-dropout-p40": ["--method", "prefix", "--base-dropout", "0"]
    + ["--prompt-length", "40"],
    "prefix-no-dropout-bf16": ["--method", "prefix", "--base-dropout", "0"]
    + ["--precision", "mixed_bfloat16"],
    "prefix-no-dropout-lr-3e-3": ["--method", "prefix", "--base-dropout", "0"]
    + ["--learning-rate", "0.003"],
    "prefix-no-dropout-epochs-4": ["--method", "prefix", "--base-dropout", "0"]
    + ["--epochs", "4"],
    "prefix-reparameterize-lr-1e-3": ["--method", "prefix", "--reparameterize"]
    + ["512", "--learning-rate", "0.001"],
    "prefix-seed-1": ["--method", "prefix", "--seed", "1"],
    "prefix-bf16-seed-1": ["--method", "prefix", "--precision", "mixed_bfloat16"]
    + ["--seed", "1"],
    # The head: the checkpoint's mean (the default) or BERT's pooler.
    "prefix-pooler": ["--method", "prefix", "--pooling", "pooler"],
    "prefix-pooler-no-base-dropout": ["--method", "prefix", "--pooling", "pooler"]
    + ["--base-dropout", "0"],
    "prefix-no-head-dropout": ["--method", "prefix", "--dropout", "0"],
    "embedding-pooler": ["--method", "embedding", "--pooling", "pooler"],
    "full": ["--full-fine-tuning"],
    "full-lr-2e-5": ["--full-fine-tuning", "--full-learning-rate", "2e-5"],
}
KEYS = (
    "accuracy",
    "sentence_accuracy",
    "train_seconds",
    "steps",
    "trainable_parameters",
    "pooling",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--train-size", default="4000")
    parser.add_argument("--eval-size", default="2000")
    parser.add_argument("--out", default=None, help="directory for the runs")
    args = parser.parse_args()
    results = {}
    for name in args.variants:
        command = [sys.executable, os.path.join(HERE, "sst2.py"), *BUDGET]
        command += ["--train-size", args.train_size, "--eval-size", args.eval_size]
        command += VARIANTS[name]
        if args.out:
            command += ["--out", os.path.join(args.out, name)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-1:]}
        else:
            record = json.loads(done.stdout.strip().splitlines()[-1])
            results[name] = {k: record.get(k) for k in KEYS}
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
