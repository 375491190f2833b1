"""Exporter: bake trained prompts into a TF Serving SavedModel.

Installed as `tf_softprompt.export`.
"""
