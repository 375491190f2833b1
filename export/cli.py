"""`tf-softprompt export`: trained run directories to a TF Serving model.

Each RUN_DIR is a finished `tf-softprompt train --out RUN_DIR`: its
`run.json` names the base model, labels, sequence length, method, prompt
length and offset; `prompt.npz` is the prompt and `head.weights.npz` the
classifier head. The keras-hub `TextClassifier` is rebuilt from the base
preset.

- One run: the tuned model (base + prompt + head) is exported as is.
- Several runs: one SavedModel serves them all; the `task` input picks each
  example's prompt (one padded table), its classifier head and its label
  names. Task names are the runs' task names (`--task` renames them, in
  order; the run directories' names when two runs share one).
- `--ensemble NAME=RUN,RUN,...` (repeatable) adds an ensemble: its runs
  (prompts trained for one task, e.g. with different `--seed`s) become
  tasks `NAME/0`, `NAME/1`, ... and a request for `NAME` runs them all in
  one pass and returns the mean of their probabilities
  (`tf_softprompt.export.ensembles`). `--ensemble NAME` without runs makes
  every RUN_DIR a member. Ensembles and plain runs share one export and one
  mixed batch.

What may differ between the runs of one export: the label names and their
number (each task keeps its own head; a task with fewer classes gets
probability 0 for the padded ones), the prompt length (shorter prompts are
masked), and the sequence length (each task's text is cut to its own
run's `sequence_length`; the export holds the longest). What must match:

- the base: one preset, checked through the prompts' fingerprints (the
  vocabulary for forms 1 and 2, every frozen weight for a prefix);
- the method (`embedding`, `prepend` or `prefix`): one table holds them;
- the prompt offset (forms 1 and 2): one insertion point for all rows;
- within one ensemble, the label names (their probabilities are averaged).

A causal-LM run (`run.json` kind "causal_lm", e.g. from `tf-softprompt
import-peft` of a CAUSAL_LM adapter) exports with `export_causal_lm` and
serves generated text; several causal-LM runs share one table the same way
(no ensembles: generated texts have no probabilities to average).

Example:
```
tf-softprompt train --out run
tf-softprompt export run --out models/demo --version 1
tf-softprompt export run_sst run_news --out models/multi --version 1
tf-softprompt export run_news --ensemble sst=seed0,seed1,seed2 \
    --out models/mixed --version 1
```
"""

import json
import os
import sys


def add_export_parser(subparsers):
    """Register `export` on the `tf-softprompt` subparsers."""
    parser = subparsers.add_parser(
        "export",
        help="export trained runs as a TF Serving SavedModel",
        description=(
            "Bake the prompts (and heads) of one or more `train` runs into a "
            "SavedModel at OUT/VERSION for TF Serving. Never overwrites a "
            "version."
        ),
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, help="model base path")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument(
        "--task",
        action="append",
        default=None,
        help="task name per RUN_DIR, in order (default: each run's task)",
    )
    parser.add_argument(
        "--ensemble",
        action="append",
        default=None,
        metavar="NAME[=RUN_DIR,RUN_DIR,...]",
        help=(
            "serve these runs (default: every RUN_DIR) as one ensemble task "
            "NAME: the mean of their probabilities, in one pass (repeatable)"
        ),
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="name served under, used in warmup requests (default: OUT's name)",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16"),
        default="float32",
        help="compute precision of the served graph (weights stay float32; "
        "bf16 probabilities are within 0.02 of float32's) (default: %(default)s)",
    )
    parser.set_defaults(func=run_export)


def parse_ensembles(values, runs):
    """`(plain_runs, {name: [run_dir, ...]})` from `--ensemble` values.

    `NAME=A,B,C` lists its runs; a bare `NAME` takes every positional run
    (which are then not served as plain tasks).
    """
    ensembles, plain = {}, list(runs)
    bare = [v for v in values or () if "=" not in v]
    if bare and (len(values) > 1 or not runs):
        raise ValueError(
            f"`--ensemble {bare[0]}` (without `=RUN,...`) makes every RUN_DIR a "
            "member, so it must be the only --ensemble and RUN_DIRs must be "
            f"given. Received --ensemble {values} with runs {list(runs)}; use "
            "`--ensemble NAME=RUN,RUN,...` for several."
        )
    for value in values or ():
        name, _, members = value.partition("=")
        name = name.strip()
        if not name or name in ensembles:
            raise ValueError(
                f"Each --ensemble needs its own non-empty NAME. Received: {value!r}."
            )
        if "=" in value:
            ensembles[name] = [m for m in members.split(",") if m]
        else:
            ensembles[name], plain = list(runs), []
    return plain, ensembles


# What the runs of one export must share: one base, one place for the
# prompt in one table, one representation read by the heads.
SHARED = ("model_path", "method", "offset", "pooling", "normalize")


def _check_same_base(runs, dirs):
    first = runs[0]
    for run, run_dir in zip(runs[1:], dirs[1:]):
        for key in SHARED:
            if run.get(key) != first.get(key):
                raise ValueError(
                    f"{run_dir} has {key}={run.get(key)!r} but {dirs[0]} has "
                    f"{first.get(key)!r}. Runs exported together must share the "
                    "base model, the method, the prompt offset and the pooling "
                    "(their prompts go into one table; the prompts' "
                    "fingerprints are checked too). Labels, heads, prompt lengths "
                    "and sequence lengths may differ."
                )


def _task_names(dirs, runs, explicit):
    from tf_softprompt import artifact
    from tf_softprompt.training import run_dir

    if explicit:
        if len(explicit) != len(dirs):
            raise ValueError(
                f"Pass one --task per RUN_DIR. Received {len(explicit)} names "
                f"for {len(dirs)} runs."
            )
        return list(explicit)
    names = [
        artifact.read_metadata(run_dir.prompt_path(d, r))["task"]
        for d, r in zip(dirs, runs)
    ]
    if len(set(names)) < len(names):
        names = [os.path.basename(os.path.normpath(d)) for d in dirs]
    return names


def _head(model, arrays, run_dir):
    """`(kernel, bias)` of a run's classifier head for `model`'s head."""
    from tf_softprompt import hub

    kernel, bias = hub.classifier_head(model)
    try:
        return arrays[kernel.path], arrays[bias.path]
    except KeyError as e:
        raise ValueError(
            f"The head of {run_dir} has no {e.args[0]!r}; saved: {sorted(arrays)}. "
            "It was written for another model."
        ) from None


def export_runs(
    run_dirs,
    out,
    version,
    tasks=None,
    model_name=None,
    ensembles=None,
    precision="float32",
):
    """Export trained run directories; returns the version directory.

    Every run kind takes one road: the runs are read (`run_dir.read_run`,
    `prompt_path`, `head_arrays`), the base is loaded once without a prompt,
    and the runs' prompt artifacts (and classifier heads) go into one
    padded table, each picked per example by `task`. One run is one task.

    Args:
        run_dirs: the plain tasks' run directories.
        out, version: the model base path and the new version.
        tasks: task names for `run_dirs`, in order (default: the runs').
        model_name: the name in warmup requests.
        ensembles: `{name: [run_dir, ...]}`: each an ensemble of its runs,
            served as `name` (members also as `name/0`, `name/1`, ...).
        precision: the served compute precision of a classifier export.

    Example:
    ```python
    export_runs(["run_news"], "models/mixed", 1,
                ensembles={"sst": ["seed0", "seed1", "seed2"]})
    ```
    """
    from tf_softprompt.training import run_dir

    plain = [os.path.abspath(d) for d in run_dirs]
    ensembles = {
        name: [os.path.abspath(d) for d in members]
        for name, members in (ensembles or {}).items()
    }
    if not plain and not ensembles:
        raise ValueError("Pass at least one RUN_DIR (or an --ensemble of runs).")
    dirs = list(plain)
    for members in ensembles.values():
        dirs += members
    runs = [run_dir.read_run(d) for d in dirs]
    names = _task_names(plain, runs[: len(plain)], tasks) if plain else []
    for name, members in ensembles.items():
        names += [f"{name}/{i}" for i in range(len(members))]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"Two runs would serve under the task names {repeated}. Pass "
            "--task NAME for each RUN_DIR to tell them apart."
        )
    kinds = {run.kind for run in runs}
    if len(kinds) > 1:
        first = [d for d, r in zip(dirs, runs) if r.is_causal_lm][0]
        other = [d for d, r in zip(dirs, runs) if not r.is_causal_lm][0]
        raise ValueError(
            f"{other} is a classifier run and {first} a causal-LM run; export "
            "them separately."
        )
    _check_same_base(runs, dirs)
    prompts = {n: run_dir.prompt_path(d, r) for n, d, r in zip(names, dirs, runs)}
    if runs[0].is_causal_lm:
        if ensembles:
            raise ValueError(
                "--ensemble averages classifier probabilities; causal-LM runs "
                "export as plain tasks only."
            )
        if precision != "float32":
            raise ValueError(
                f"precision={precision!r} is for classifier exports; causal-LM "
                "runs export in float32. Drop --precision."
            )
        return _export_causal_lm_runs(runs, prompts, out, version, model_name)
    return _export_classifier_runs(
        dirs, runs, names, prompts, out, version, model_name, ensembles, precision
    )


def _export_classifier_runs(
    dirs, runs, names, prompts, out, version, model_name, ensembles, precision
):
    from tf_softprompt.export import export_model
    from tf_softprompt.training import models, run_dir
    from tf_softprompt.training import precision as precision_lib

    first = runs[0]
    sequence_length = max(int(r["sequence_length"]) for r in runs)
    preprocessor = models.load_preprocessor(first["model_path"], sequence_length)
    classes = max(int(r.num_classes) for r in runs)
    with precision_lib.policy(precision):
        model = models.load_classifier(
            first["model_path"],
            classes,
            pooling=first.get("pooling", "pooler"),
            normalize=first.get("normalize", False),
        )
    heads = {
        name: _head(model, run_dir.head_arrays(d, r), d)
        for name, d, r in zip(names, dirs, runs)
    }
    slots = max(_slots(r) for r in runs)
    return export_model(
        model,
        out,
        version,
        tokenizer=preprocessor.tokenizer,
        sequence_length=sequence_length + slots,
        labels={name: list(r.labels) for name, r in zip(names, runs)},
        prompts=prompts,
        offset=int(first["offset"]) if _slots(first) else None,
        heads=heads,
        model_name=model_name,
        ensembles={
            name: [f"{name}/{i}" for i in range(len(members))]
            for name, members in ensembles.items()
        },
        text_lengths={n: int(r["sequence_length"]) for n, r in zip(names, runs)},
    )


def _slots(run):
    """Sequence positions a run's prompt takes (0 for a prefix)."""
    from tf_softprompt import methods

    return methods.get(run.method).sequence_slots(int(run.prompt_length))


def _export_causal_lm_runs(runs, prompts, out, version, model_name):
    """Causal-LM runs in one table, picked per example by `task`. Positions:
    the longest `sequence_length` plus the longest prompt's slots."""
    from tf_softprompt.export import export_causal_lm
    from tf_softprompt.training import run_dir

    sequence_length = max(int(r["sequence_length"]) for r in runs)
    positions = sequence_length + max(_slots(r) for r in runs)
    model, preprocessor = run_dir.load_causal_lm(runs[0], sequence_length)
    return export_causal_lm(
        model,
        out,
        version,
        sequence_length=positions,
        preprocessor=preprocessor,
        prompts=prompts,
        model_name=model_name,
    )


def run_export(args):
    try:
        plain, ensembles = parse_ensembles(args.ensemble, args.runs)
        path = export_runs(
            plain,
            args.out,
            args.version,
            args.task,
            args.model_name,
            ensembles,
            precision=args.precision,
        )
    except FileExistsError as e:
        print(f"tf-softprompt export: error: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(path, "assets.extra", "tf_softprompt.json")) as f:
        info = json.load(f)
    kept = info.get("max_text_tokens")
    if kept is not None:
        print(
            f"tf-softprompt export: note: served texts keep their first {kept} "
            "tokens (export info `max_text_tokens`); longer texts are cut. "
            "Train with a larger --sequence-length to keep more.",
            file=sys.stderr,
        )
    print(json.dumps({"exported": path, **info}, sort_keys=True, ensure_ascii=False))
    return 0
