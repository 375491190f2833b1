"""Exporter: bake trained prompts into a TF Serving SavedModel.

Installed as `tf_softprompt.export`. See `exporter.export_model` for the
signatures it writes, `prompt_table` for multi-task prompt tables,
`generation.export_causal_lm` for causal LMs that serve generated
text, `text` for the truncation policy and `layout` for the versioned, atomic
directory layout and warmup requests.
"""

from tf_softprompt.export.exporter import TPU_ALIAS, export_model, find_prompt_layer
from tf_softprompt.export.generation import export_causal_lm
from tf_softprompt.export.layout import read_warmup_requests, version_dir
from tf_softprompt.export.prompt_table import MultiTaskPromptTable, insert_prompt_ids
from tf_softprompt.export.text import TextEncoder

__all__ = [
    "TPU_ALIAS",
    "MultiTaskPromptTable",
    "TextEncoder",
    "export_causal_lm",
    "export_model",
    "find_prompt_layer",
    "insert_prompt_ids",
    "read_warmup_requests",
    "version_dir",
]
