"""The `tf-softprompt import-peft` subcommand."""

import json
import os
import sys

from tf_softprompt.peft.importer import import_peft


def add_import_parser(subparsers):
    """Register `import-peft` on the `tf-softprompt` subparsers."""
    parser = subparsers.add_parser(
        "import-peft",
        help="convert a PEFT prompt or prefix adapter into a run directory",
        description=(
            "Read a PEFT PROMPT_TUNING or P_TUNING adapter (SEQ_CLS on BERT, or "
            "CAUSAL_LM) or a PREFIX_TUNING adapter (CAUSAL_LM) from its "
            "adapter_config.json and adapter_model.safetensors, without PyTorch, "
            "and write a run directory with PEFT's exact layout (a prompt before "
            "[CLS]/BOS at offset 0; a prefix as past keys/values, the text at "
            "positions P..) that `tf-softprompt export` serves."
        ),
    )
    parser.add_argument("adapter_dir", metavar="ADAPTER_DIR")
    parser.add_argument(
        "--model",
        required=True,
        help="the base model: keras-hub preset, or a (Hugging Face) model directory",
    )
    parser.add_argument("--out", required=True, help="the new run directory")
    parser.add_argument(
        "--label",
        action="append",
        default=None,
        help="SEQ_CLS: class name, once per class in order (default LABEL_0, ...)",
    )
    parser.add_argument(
        "--sequence-length",
        type=int,
        default=None,
        help="text positions, prompt excluded (default 128, or what the base allows)",
    )
    parser.add_argument(
        "--task", default=None, help="task name (default: the adapter's directory)"
    )
    parser.set_defaults(func=run_import)


def run_import(args):
    try:
        record = import_peft(
            args.adapter_dir,
            args.model,
            args.out,
            labels=args.label,
            sequence_length=args.sequence_length,
            task=args.task,
        )
    except FileExistsError as e:
        print(f"tf-softprompt import-peft: error: {e}", file=sys.stderr)
        return 2
    summary = {
        "imported": os.path.abspath(args.out),
        "peft_type": record["source"]["peft_type"],
        "task_type": record["source"]["task_type"],
        "prompt_length": record["prompt_length"],
        "method": record["method"],
        "offset": record["offset"],
        "sequence_length": record["sequence_length"],
    }
    print(json.dumps(summary, sort_keys=True, ensure_ascii=False))
    return 0


__all__ = ["add_import_parser", "run_import"]
