"""The base model of a run: loading it, and enabling prompt tuning on it.

Example:
```python
model = load_classifier(resolve_model(None), num_classes=2)  # mean pooling
handle = enable_prompt(model, config, preprocessor, ["negative", "positive"])
```
"""

from tf_softprompt import checkpoints, initializers, methods


def packaged_model_dir():
    """The all-MiniLM-L6-v2 directory (`tf_softprompt.packaged_model`)."""
    from tf_softprompt import packaged_model

    return packaged_model.model_dir()


def resolve_model(model):
    """The preset name or directory to load, from a `--model` value.

    Args:
        model: `None` (the packaged MiniLM), a directory, or a preset name.
    """
    if model is None:
        return packaged_model_dir()
    return checkpoints.resolve(model)


def load_preprocessor(model_path, sequence_length):
    """The task preprocessor of a preset or checkpoint directory, cutting
    texts to `sequence_length` (`tf_softprompt.checkpoints`: a Hugging Face
    directory tokenises as its own tokenizer does)."""
    return checkpoints.load_classifier_preprocessor(model_path, sequence_length)


def load_classifier(
    model_path, num_classes, dropout=None, base_dropout=None, pooling=None, **kwargs
):
    """A `PooledTextClassifier` over the base, without preprocessor.

    The model takes the preprocessor's feature dict (`token_ids`,
    `padding_mask`, `segment_ids`) and returns `[B, num_classes]` logits.

    Args:
        model_path: preset name or directory.
        num_classes: int.
        dropout: the head's dropout; `None` keeps the task default.
        base_dropout: the backbone's dropout; `None` keeps the preset's.
        pooling: the representation the head reads (`classifier.MODES`);
            `None`: the checkpoint's (`checkpoints.default_pooling`).
        **kwargs: `normalize` (bool, or `None` for the checkpoint's).
    """
    from tf_softprompt import hub

    model = checkpoints.load_classifier(
        model_path, num_classes, pooling=pooling, dropout=dropout, **kwargs
    )
    if base_dropout is not None:
        hub.set_dropout(model, base_dropout)
    return model


def _vocabulary(model):
    backbone = getattr(model, "backbone", model)
    return backbone.token_embedding.embeddings


def prompt_initializer(config, model, preprocessor, label_names):
    """The initialiser named by `config.init`, for `config.method` (seeded).

    Forms 1 and 2 start from embedding rows; a prefix starts from the keys
    and values the same tokens produce in the frozen model.
    """
    vocabulary = _vocabulary(model)
    vocab_size = int(vocabulary.shape[0])
    prefix = isinstance(methods.get(config.method), methods.PrefixMethod)
    if config.init == "uniform":
        return initializers.uniform(seed=config.seed)
    if config.init == "vocab":
        if prefix:
            return methods.prefix.sampled_vocabulary(
                config.prompt_length, vocab_size, seed=config.seed
            )
        return initializers.from_sample_of_embeddings(vocabulary, seed=config.seed)
    tokenizer = preprocessor.tokenizer
    words = list(label_names)[: config.prompt_length]
    if prefix:
        return methods.prefix.from_words(
            words, tokenizer, config.prompt_length, vocab_size, seed=config.seed
        )
    return initializers.from_label_words(
        vocabulary,
        words,
        tokenize=lambda word: tokenizer(word),
        fallback=initializers.from_sample_of_embeddings(vocabulary, seed=config.seed),
    )


def enable_prompt(model, config, preprocessor, label_names, offset=None):
    """Enable prompt tuning on `model` as `config` says; returns the handle."""
    from tf_softprompt import hub

    kwargs = {}
    offset = config.offset if offset is None else offset
    if offset is not None and methods.get(config.method).sequence_slots(1):
        kwargs["offset"] = offset
    if config.reparameterize:
        kwargs["reparameterization"] = {"hidden_dim": config.reparameterize}
    return hub.enable_prompt_tuning(
        model,
        config.prompt_length,
        method=config.method,
        initializer=prompt_initializer(config, model, preprocessor, label_names),
        **kwargs,
    )
