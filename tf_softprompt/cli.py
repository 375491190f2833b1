"""The `tf-softprompt` command line (also `python -m tf_softprompt`).

Subcommands (`commands`, and the providers below):

- `train`: prompt-tune a text classifier (by default the packaged MiniLM on
  the embedded sentiment set) or, with `--task causal-lm`, a causal LM,
  and write the run directory `--out DIR`.
- `eval`: held-out figures of a run; `predict`: labels of texts;
  `generate`: continuations of prompts; `info`: metadata as JSON.
- `export`, `query`, `import-peft`: serving and importing.

What a user sees: TensorFlow's log lines are held back (`console`) and
every error a user can cause is one line, `tf-softprompt CMD: error: ...`,
exit status 2 (`--verbose` shows TensorFlow's lines and the traceback).
TensorFlow is imported only once a command runs, so `--help` and
`--version` answer at once.

Example:
```
tf-softprompt train --out runs/default
tf-softprompt predict --out runs/default "What a lovely film." "Cold soup."
tf-softprompt info runs/default
```

Adding subcommands: every entry of `SUBCOMMAND_PROVIDERS` names a function
`add_parser(subparsers)` as `"module:function"` (or is the function itself).
It adds its subcommands to the `argparse` subparsers and gives each
`set_defaults(func=handler)`, where `handler(args)` returns an exit code.
Providers must not import TensorFlow at import time, so a new one is one
added line, e.g. `"tf_softprompt.export.cli:add_export_parser",`.
"""

import argparse
import contextlib
import importlib
import sys
import traceback

import tf_softprompt
from tf_softprompt import console

SUBCOMMAND_PROVIDERS = [
    "tf_softprompt.commands:add_parsers",
    "tf_softprompt.export.cli:add_export_parser",
    "tf_softprompt.serving.client:add_query_parser",
    "tf_softprompt.peft.cli:add_import_parser",
]
VERBOSE_FLAG = "--verbose"


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and a `--help` hint,
    without the usage block."""

    def error(self, message):
        self.exit(
            2,
            f"{self.prog}: error: {message}\n"
            f"Run `{self.prog} --help` for the options.\n",
        )


def _load_provider(spec):
    if callable(spec):
        return spec
    module_name, _, function_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def build_parser():
    """The `argparse` parser with every registered subcommand."""
    parser = ArgumentParser(
        prog="tf-softprompt",
        description="Soft-prompt tuning for TensorFlow and keras-hub models.",
        epilog=f"{VERBOSE_FLAG} (anywhere): show TensorFlow's log lines and "
        "the traceback of an error.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {tf_softprompt.__version__}"
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=ArgumentParser
    )
    subparsers.required = True
    for spec in SUBCOMMAND_PROVIDERS:
        _load_provider(spec)(subparsers)
    return parser


# The errors a user can cause (bad values, files, a server not running),
# printed as one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, LookupError, FloatingPointError)


def _run(args, verbose):
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if verbose:
            traceback.print_exc()
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"tf-softprompt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tf-softprompt {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv=None):
    """Entry point of the `tf-softprompt` console script.

    Args:
        argv: the arguments (default `sys.argv[1:]`); `--verbose` may be
            anywhere.

    Returns:
        The exit status: 0, 2 for a user error (one line on stderr), 130
        when interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = VERBOSE_FLAG in argv
    argv = [a for a in argv if a != VERBOSE_FLAG]
    args = build_parser().parse_args(argv)
    if verbose:
        return _run(args, verbose)
    console.quiet_python_logs()
    with console.filtered_stderr():
        with contextlib.suppress(ImportError):
            importlib.import_module("tensorflow").get_logger().setLevel("ERROR")
        return _run(args, verbose)


if __name__ == "__main__":
    sys.exit(main())
