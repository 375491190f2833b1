"""`enable_prompt_tuning`: one call on a keras-hub Backbone or Task."""

from tf_softprompt import initializers, methods
from tf_softprompt.hub import adapter
from tf_softprompt.hub.handle import HANDLE_ATTRIBUTE, PromptTuning
from tf_softprompt.hub.table import PromptTable, resolve_initializer
from tf_softprompt.methods.prefix import KeyValueInitializer, Reparameterization
from tf_softprompt.validation import check_num_prompt_tokens, check_offset

TABLE_ATTRIBUTE = "prompt_tuning_table"


def enable_prompt_tuning(
    model,
    num_prompt_tokens,
    *,
    offset=None,
    method="embedding",
    initializer="uniform",
    reparameterization=None,
):
    """Enable soft-prompt tuning on a keras-hub Backbone or Task, in place.

    Adds the method's trainable float32 weights and freezes every weight of
    the backbone, layer by layer (`backbone.trainable` stays True; setting
    it to False would freeze the prompt too). Layers a Task adds on top of
    its backbone (e.g. a `TextClassifier`'s output dense) keep their
    trainable setting, so a classifier trains prompt + head; freeze them
    yourself for prompt-only training. Call it before `compile()`.

    Callers never see virtual ids: inputs are plain `[B, T]` token ids,
    sequence outputs, logits and generated ids are `[B, T, ...]`, and logits
    cover the V real ids only. Left padding, right padding and mixed lengths
    give the per-example unpadded results. For generation the rows are
    returned left-aligned.

    Args:
        model: a `keras_hub.models.Backbone` or a `Task` wrapping one
            (`CausalLM`, `TextClassifier`, ...).
        num_prompt_tokens: int, P.
        offset: int, forms 1 and 2 put the prompt after the first `offset`
            valid tokens of each row. Defaults to 1 for backbones with a
            `pooled_output` (BERT-style: [CLS] stays first for the pooler)
            and 0 otherwise (causal LMs: the prompt comes first; pass 1 to
            keep a BOS token first). A prefix has no sequence position; its
            offset is 0.
        method: a name in `tf_softprompt.methods.NAMES` (or the method):
            `"embedding"`: the prompt rows are embeddings of virtual ids, so
            they get positions, segment embeddings and scaling like any
            token (all models). `"prepend"`: the prompt vectors replace the
            token + position (+ segment) sum at their slots and real tokens
            keep their unprompted positions (absolute position embeddings:
            GPT2, BERT). `"prefix"`: trainable keys and values
            `[L, 2, P, kv_heads, head_dim]` in every self-attention layer
            (GPT2, Gemma, Llama, BERT).
        initializer: `"uniform"`, a `tf_softprompt.initializers`
            initialiser (e.g. `from_label_words(vocabulary, words,
            tokenize)`), or for a prefix a `methods.prefix` initialiser
            (`from_words`, `from_token_ids`, `sampled_vocabulary`: the keys
            and values those tokens produce in the frozen model).
        reparameterization: prefix only, `None` or a
            `methods.prefix.Reparameterization` (or its dict): train the
            prefix through Li and Liang's MLP.

    Returns:
        The `PromptTuning` handle (also `get_prompt_tuning(model)`).

    Raises:
        UnsupportedModelError: for models without the keras-hub structure
            the method needs, naming the class.

    Example:
    ```python
    classifier = keras_hub.models.BertTextClassifier.from_preset(
        "bert_tiny_en_uncased", num_classes=2
    )
    handle = tf_softprompt.hub.enable_prompt_tuning(classifier, 10, method="prefix")
    classifier.compile(optimizer=keras.optimizers.Adam(1e-2))
    classifier.fit(texts, labels)
    ```
    """
    adapter.check_keras_hub_version()
    backbone, task = adapter.split(model)
    method = methods.get(method)
    check_num_prompt_tokens(num_prompt_tokens)
    adapter.check_structure(model, backbone, method)
    existing = getattr(backbone, HANDLE_ATTRIBUTE, None)
    if existing is not None:
        same = (existing.num_prompt_tokens, existing.method) == (
            num_prompt_tokens,
            method,
        ) and offset in (None, existing.offset)
        if (
            task is None
            or getattr(task, HANDLE_ATTRIBUTE, None) is not None
            or not same
        ):
            raise ValueError(
                f"Prompt tuning is already enabled on `{backbone.name}`. Use "
                "`tf_softprompt.hub.get_prompt_tuning(model)` to get its handle."
            )
        # A Task built around an enabled backbone: add its generate/score.
        adapter.attach_task(existing, task)
        return existing
    if method.uses_virtual_ids:
        offset = (
            adapter.default_offset(backbone) if offset is None else check_offset(offset)
        )
    else:
        if offset not in (None, 0):
            raise ValueError(
                f"method={method.name!r} has no place in the sequence, so it takes "
                f"no offset. Received: offset={offset!r}. Leave `offset` unset."
            )
        offset = 0
    dims = adapter.model_dims(backbone, method)
    shape = method.prompt_shape(dims, num_prompt_tokens)
    if isinstance(initializer, KeyValueInitializer) and not method.attends:
        raise ValueError(
            f"{initializer.description} initialises a prefix's keys and values; "
            f"method={method.name!r} takes a tf_softprompt.initializers initialiser."
        )
    if isinstance(reparameterization, dict):
        reparameterization = Reparameterization(**reparameterization)
    embedding_init = "uniform"
    if reparameterization is not None:
        if reparameterization.embedding_dim is None:
            reparameterization = Reparameterization(
                reparameterization.hidden_dim, dims.hidden_dim
            )
        if (
            isinstance(initializer, KeyValueInitializer)
            and reparameterization.embedding_dim == dims.hidden_dim
        ):
            # The MLP starts from the tokens' embeddings (Li and Liang
            # initialise with real words).
            embedding_init = initializers.from_token_ids(
                backbone.token_embedding.embeddings,
                [[t] for t in initializer.token_ids],
            )
        initializer = "uniform"
    initializer = resolve_initializer(
        initializer, lambda ids: adapter.capture_keys_values(backbone, ids)
    )

    adapter.freeze(backbone)
    table = PromptTable(
        shape,
        method=method.name,
        offset=offset,
        prompt_initializer=initializer,
        reparameterization=reparameterization,
        embedding_initializer=embedding_init,
        name=TABLE_ATTRIBUTE,
    )
    handle = PromptTuning(
        model, backbone, method, num_prompt_tokens, offset, dims, table
    )
    # Tracked by the backbone: in trainable_variables, weights files and
    # checkpoints, never inside the token embedding.
    setattr(backbone, TABLE_ATTRIBUTE, table)
    object.__setattr__(backbone, HANDLE_ATTRIBUTE, handle)
    adapter.install(handle)
    if task is not None:
        adapter.attach_task(handle, task)
    return handle
