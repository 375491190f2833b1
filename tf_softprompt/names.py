"""The names the command line offers as choices, importable without
TensorFlow (so `tf-softprompt --help` answers at once).

The modules that implement each choice check at import that they implement
exactly these: `tf_softprompt.methods` the `METHODS`,
`tf_softprompt.classifier` the `POOLINGS`, `tf_softprompt.training.tasks`
the `TASKS`.
"""

METHODS = ("embedding", "prepend", "prefix", "past_prefix")
POOLINGS = ("mean", "cls", "max", "pooler")
PRECISIONS = ("float32", "mixed_bfloat16")
TASKS = ("classification", "causal-lm")
SAMPLERS = ("greedy", "top_k", "top_p")
