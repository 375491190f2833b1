"""Exporter: bake trained prompts into a TF Serving SavedModel.

Installed as `tf_softprompt.export`. Modules, one concept each:

- `classifier.export_model`: classifiers (probabilities, label ids/names);
- `causal_lm.export_causal_lm`: causal LMs that serve generated text;
- `core_models`: models built with the core layers (clone with the table);
- `hub_models`: keras-hub models, through `tf_softprompt.hub`;
- `prompt_table.MultiTaskPromptTable`: several prompts in one padded table;
- `ensembles.Routes`: served names that run one task or an ensemble of
  tasks (the mean of their probabilities);
- `archive`: the endpoint builder and the one archive writer;
- `text.TextEncoder`: in-graph tokenisation and the truncation policy;
- `layout`: the versioned, atomic directory layout and warmup requests;
- `cli`: `tf-softprompt export`.
"""

from tf_softprompt.export.archive import TPU_ALIAS, read_info
from tf_softprompt.export.causal_lm import export_causal_lm
from tf_softprompt.export.classifier import export_model
from tf_softprompt.export.core_models import find_prompt_layer
from tf_softprompt.export.layout import read_warmup_requests, version_dir
from tf_softprompt.export.prompt_table import MultiTaskPromptTable
from tf_softprompt.export.text import TextEncoder

__all__ = [
    "TPU_ALIAS",
    "MultiTaskPromptTable",
    "TextEncoder",
    "export_causal_lm",
    "export_model",
    "find_prompt_layer",
    "read_info",
    "read_warmup_requests",
    "version_dir",
]
