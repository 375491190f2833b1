"""Serving assets and client: TF Serving configs, the C-API loader and a
REST/gRPC client.

Installed as `tf_softprompt.serving`. `loaders` runs exported signatures the
way TF Serving loads them (TF1 session loader, C API via `c_loader.c`);
`client` queries a running TF Serving (`tf-softprompt query`).
"""
