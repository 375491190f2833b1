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

from tf_softprompt import lazy

_EXPORTS = {
    "TPU_ALIAS": "archive",
    "MultiTaskPromptTable": "prompt_table",
    "TextEncoder": "text",
    "export_causal_lm": "causal_lm",
    "export_model": "classifier",
    "find_prompt_layer": "core_models",
    "read_info": "archive",
    "read_warmup_requests": "layout",
    "version_dir": "layout",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy.attributes(__name__, _EXPORTS)
