"""`enable_prompt_tuning` and `disable_prompt_tuning`: one call on a
keras-hub Backbone or Task, and the way back."""

import keras

# Imported for their model classes, registered below.
import tf_softprompt.checkpoints.keras_hub_fixes  # noqa: F401
import tf_softprompt.classifier  # noqa: F401
from tf_softprompt import initializers, methods
from tf_softprompt.hub import inspection, model_classes
from tf_softprompt.hub.handle import CONFIG_VERSION, PromptTuning
from tf_softprompt.hub.installation import TABLE_ATTRIBUTE, Installation
from tf_softprompt.hub.table import PromptTable
from tf_softprompt.methods.prefix import KeyValueInitializer, Reparameterization
from tf_softprompt.validation import check_num_prompt_tokens


def get_prompt_tuning(model):
    """The `PromptTuning` handle of an enabled model, or `None`."""
    if not inspection.is_hub_model(model):
        return None
    return model_classes.prompt_tuning_of(model)


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

    Adds the method's trainable weights and freezes every weight of the
    backbone, layer by layer (`backbone.trainable` stays True; setting it to
    False would freeze the prompt too). Layers a Task adds on top of its
    backbone (e.g. a `TextClassifier`'s output dense) keep their trainable
    setting, so a classifier trains prompt + head; freeze them yourself for
    prompt-only training. Call it before `compile()`.

    The model stays an ordinary Keras model: its config records the prompt
    tuning, so `model.save()` and `keras.saving.load_model()` (with
    `tf_softprompt.hub` imported), `get_config()`/`from_config()`,
    `save_weights()`/`load_weights()`, `keras.models.clone_model` and
    `model.export()` all carry the prompt. `disable_prompt_tuning(model)`
    gives the base back exactly.

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
            (GPT2, Gemma, Llama, BERT). `"past_prefix"`: the same, standing
            for P past positions (PEFT's layout).
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
    classifier.save("tuned.keras")  # keras.saving.load_model brings it back
    ```
    """
    inspection.check_keras_hub_version()
    method = methods.get(method)
    check_num_prompt_tokens(num_prompt_tokens)
    structure = inspection.inspect(model)
    inspection.check_method(structure, method)
    existing = model_classes.prompt_tuning_of(structure.backbone)
    if existing is not None:
        return _attach(existing, structure, num_prompt_tokens, method, offset)
    offset = method.place(offset, structure.default_offset)
    shape = method.prompt_shape(structure.dims, num_prompt_tokens)
    is_prefix = isinstance(method, methods.PrefixMethod)
    if isinstance(initializer, KeyValueInitializer) and not is_prefix:
        raise ValueError(
            f"{initializer.description} initialises a prefix's keys and values; "
            f"method={method.name!r} takes a tf_softprompt.initializers initialiser."
        )
    if isinstance(reparameterization, dict):
        reparameterization = Reparameterization(**reparameterization)
    description = _description(initializer)
    embedding_init = "uniform"
    if reparameterization is not None:
        if reparameterization.embedding_dim is None:
            reparameterization = Reparameterization(
                reparameterization.hidden_dim, structure.dims.hidden_dim
            )
        if (
            isinstance(initializer, KeyValueInitializer)
            and reparameterization.embedding_dim == structure.dims.hidden_dim
        ):
            # The MLP starts from the tokens' embeddings (Li and Liang
            # initialise with real words).
            embedding_init = initializers.from_token_ids(
                structure.token_embedding.embeddings,
                [[t] for t in initializer.token_ids],
            )
        initializer = "uniform"
    captured = isinstance(initializer, KeyValueInitializer)
    table = PromptTable(
        shape,
        method=method.name,
        offset=offset,
        prompt_initializer=keras.initializers.Zeros() if captured else initializer,
        reparameterization=reparameterization,
        embedding_initializer=embedding_init,
        name=TABLE_ATTRIBUTE,
        dtype=structure.backbone.dtype_policy,
    )
    handle = PromptTuning(
        model, structure, method, num_prompt_tokens, offset, table, description
    )
    handle.installation = Installation(handle, restore)
    handle.installation.install()
    if captured:
        handle.assign_prompt(handle.base_keys_values(initializer.token_ids))
    if structure.task is not None:
        handle.installation.attach_task(structure.task)
    return handle


def _description(initializer):
    if isinstance(initializer, KeyValueInitializer):
        return initializer.description
    if isinstance(initializer, (str, type(None))):
        return initializer or "uniform"
    return initializers.describe(initializer)


def _attach(handle, structure, num_prompt_tokens, method, offset):
    """A Task built around an enabled backbone: give it the prompt."""
    task = structure.task
    same = (handle.num_prompt_tokens, handle.method) == (num_prompt_tokens, method)
    if task is None or not same or offset not in (None, handle.offset):
        raise ValueError(
            f"Prompt tuning is already enabled on `{structure.backbone.name}`. "
            "Use `tf_softprompt.hub.get_prompt_tuning(model)` to get its "
            "handle, or `disable_prompt_tuning(model)` first to start over."
        )
    if model_classes.prompt_tuning_of(task) is handle and type(task).__dict__.get(
        "tf_softprompt_base"
    ):
        return handle
    handle.installation.attach_task(task)
    handle.model = task
    handle.structure = structure
    return handle


def disable_prompt_tuning(model):
    """Take prompt tuning off a keras-hub model (`PromptTuning.disable`).

    The base's classes, layers, variables and trainable flags are as before
    `enable_prompt_tuning`, its outputs bit-identical, and prompt tuning can
    be enabled again. The prompt's values go with it: save them first
    (`handle.save_prompt`).

    Raises:
        ValueError: if prompt tuning is not enabled on the model.

    Example:
    ```python
    handle.save_prompt("task.prompt.npz")
    tf_softprompt.hub.disable_prompt_tuning(lm)  # lm is the base again
    ```
    """
    handle = get_prompt_tuning(model)
    if handle is None:
        raise ValueError(
            f"Prompt tuning is not enabled on `{getattr(model, 'name', model)}`; "
            "there is nothing to disable."
        )
    handle.disable()


def restore(model, config):
    """Enable prompt tuning on a rebuilt model from its config entry.

    Called by the prompt-tuned classes' `from_config` (`model.save()` /
    `keras.saving.load_model()`, `clone_model`, presets). The prompt starts
    at zero; the model's weights, loaded next, hold its values.

    Args:
        model: the rebuilt base model.
        config: the `"prompt_tuning"` dict of a Backbone's config, or
            `None` for a Task (its backbone was restored already).
    """
    if config is None:
        handle = model_classes.prompt_tuning_of(model)
        if handle is None:
            raise ValueError(
                f"The saved `{type(model).__name__}` was prompt-tuned, but its "
                "backbone's config has no prompt tuning. The file is damaged."
            )
        enable_prompt_tuning(
            model,
            handle.num_prompt_tokens,
            method=handle.method,
            offset=handle.offset,
        )
        return
    version = config.get("version")
    if not isinstance(version, int) or not 1 <= version <= CONFIG_VERSION:
        raise ValueError(
            f"The model's prompt-tuning config has version={version!r}, but this "
            f"tf-softprompt reads versions 1 to {CONFIG_VERSION}. Upgrade "
            "tf-softprompt to load it."
        )
    method = methods.get(config["method"])
    offset = config["offset"] if method.sequence_slots(1) else None
    handle = enable_prompt_tuning(
        model,
        int(config["num_prompt_tokens"]),
        method=method,
        offset=offset,
        initializer=keras.initializers.Zeros(),
        reparameterization=config.get("reparameterization"),
    )
    handle.initializer = str(config.get("initializer", "unknown"))
    for name, rows in (config.get("tasks") or {}).items():
        handle.add_task(name, rows)


# Saved prompt-tuned models of every keras-hub class (and of this package's
# own classifier and corrected backbones, imported above) load once this
# module is imported.
model_classes.register_all(restore)


__all__ = [
    "disable_prompt_tuning",
    "enable_prompt_tuning",
    "get_prompt_tuning",
    "restore",
]
