"""Tiny Hugging Face checkpoint directories, written without torch (not a
test module).

Each writer lays out a directory the way `save_pretrained` of transformers
and its tokenizer would: `config.json`, `generation_config.json`,
`model.safetensors` (torch's `[out, in]` layouts and parameter names), the
tokenizer files and `tokenizer_config.json` / `special_tokens_map.json`.
Both readers accept the result:

- keras-hub: `keras_hub.models.CausalLM.from_preset(directory)` and
  `keras_hub.models.CausalLMPreprocessor.from_preset(directory)`, through
  its converters in `keras_hub/src/utils/transformers/convert_*.py`;
- transformers: `AutoModelForCausalLM.from_pretrained(directory)` and
  `AutoTokenizer.from_pretrained(directory)`.

The writers use numpy, json and `safetensors.numpy` only, so the test suite
(which never imports torch) and `tests/fixtures/make_reference.py` (which
runs the transformers references in a separate environment) build the same
bytes from the same seed. The fixtures record the SHA-256 of every file
written here (`"files_sha256"` in `tests/fixtures/{gpt2,llama,...}.json`);
a test can compare them with `file_hashes` to be sure the fixtures still
describe what these functions write.

The models are tiny (2 layers, hidden 32, 4 query heads) with weights drawn
from `np.random.default_rng(seed)` at standard deviations 0.05 to 0.2, so
logits are not flat (their standard deviation is about 0.57). The
configurations use the values that matter for fidelity and that real
checkpoints use: GPT-2's `gelu_new` and `layer_norm_epsilon=1e-5`; Llama's
`silu`, `rms_norm_eps=1e-5`, `rope_theta=10000` (or `500000`), untied output
embeddings and 4 query heads over 2 key/value heads; Gemma's
`gelu_pytorch_tanh`, `rms_norm_eps=1e-6`, `head_dim=16` (not hidden/heads =
8) and one key/value head.

Tokenizers cover every input: GPT-2 and Llama are byte-level BPEs over all
256 bytes (GPT-2: `vocab.json` + `merges.txt`; Llama: the Llama 3
`tokenizer.json` form with its pre-tokenizer regex and a BOS post-processor,
which `convert_llama3.py` reads); Gemma is a SentencePiece BPE model with
byte fallback (`tokenizer.model`, serialised here by hand, see
`sentencepiece_model_proto`). Their merges build a few dozen English words
(and " café", and for the byte-level BPEs "2024") from characters, so
ordinary text gives multi-character tokens and anything else falls back to
bytes.

Example:
```python
import keras_hub
from hf_checkpoints import write_llama

path = write_llama("/tmp/tiny-llama", seed=0, rope_theta=500000.0)
lm = keras_hub.models.CausalLM.from_preset(path)
```
"""

import hashlib
import json
import os
import struct

import numpy as np
import safetensors.numpy

# Words the BPE merges build, left to right, in this priority order.
WORDS = [
    " the",
    " a",
    " film",
    " movie",
    " is",
    " was",
    " good",
    " bad",
    " great",
    " story",
    " and",
    " of",
    " to",
    " it",
    " not",
    " very",
    "The",
    " The",
    " Hello",
    " world",
    " café",
    "ing",
    "er",
    # Four digits: GPT-2's pre-tokenizer keeps "2024" whole, Llama 3's splits
    # numbers into groups of at most three digits ("202", "4").
    " 2024",
    "2024",
]

GPT2_END = "<|endoftext|>"
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
# Llama 3's pre-tokenizer split (GPT-2's is built into `ByteLevel(use_regex=True)`).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# SentencePiece `ModelProto.SentencePiece.Type` and `TrainerSpec.ModelType`.
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_BYTE = 1, 2, 3, 4, 6
SP_BPE = 2
SP_SPACE = "\u2581"  # "▁", SentencePiece's escaped space
GEMMA_SPECIALS = [
    ("<pad>", SP_CONTROL),
    ("<eos>", SP_CONTROL),
    ("<bos>", SP_CONTROL),
    ("<unk>", SP_UNKNOWN),
    ("<mask>", SP_USER_DEFINED),
    ("<start_of_turn>", SP_USER_DEFINED),
    ("<end_of_turn>", SP_USER_DEFINED),
]
GEMMA_CHARACTERS = (
    [SP_SPACE]
    + list("abcdefghijklmnopqrstuvwxyz")
    + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    + list("0123456789")
    + list(".,!?'-é")
)


# --- byte-level BPE -------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 bytes to printable characters.

    Returns:
        A dict `{byte: character}`, in GPT-2's id order: the printable
        bytes `!`..`~`, `¡`..`¬`, `®`..`ÿ` map to themselves and come first,
        the 68 others map to U+0100 onwards (space is `Ġ`, U+0120).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def byte_level(text):
    """`text` in byte-level characters (`" café"` -> `"ĠcafÃ©"`)."""
    encoder = bytes_to_unicode()
    return "".join(encoder[byte] for byte in text.encode("utf-8"))


def chain_merges(words):
    """Merges that build each word from its characters, left to right.

    Args:
        words: a list of strings, each already in the model's character set.

    Returns:
        A list of `(left, right)` pairs without repeats, in priority order:
        the first word's merges first.
    """
    merges, seen = [], set()
    for word in words:
        left = word[0]
        for char in word[1:]:
            if (left, char) not in seen:
                seen.add((left, char))
                merges.append((left, char))
            left += char
    return merges


def byte_level_bpe():
    """The vocabulary and merges shared by the GPT-2 and Llama tokenizers.

    Returns:
        `(vocabulary, merges)`: a dict `{token: id}` of the 256 byte
        characters (ids 0-255, GPT-2's order, so id 0 is `"!"`) followed by
        every merge result in merge order, and the list of merge pairs.
    """
    merges = chain_merges([byte_level(word) for word in WORDS])
    tokens = list(bytes_to_unicode().values()) + [
        left + right for left, right in merges
    ]
    return {token: index for index, token in enumerate(tokens)}, merges


# --- SentencePiece --------------------------------------------------------------


def _varint(value):
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number, wire_type, payload):
    key = _varint(number << 3 | wire_type)
    if wire_type == 0:  # varint (int, bool, enum)
        return key + _varint(int(payload))
    if wire_type == 2:  # length-delimited (string, bytes, message)
        payload = payload.encode("utf-8") if isinstance(payload, str) else payload
        return key + _varint(len(payload)) + payload
    if wire_type == 5:  # 32-bit float
        return key + struct.pack("<f", payload)
    raise ValueError(f"Unsupported wire type: {wire_type}")


def sentencepiece_model_proto(pieces, *, unk_id, bos_id, eos_id, pad_id):
    """Serialise a SentencePiece BPE `ModelProto` without the library.

    The trainer and normaliser settings are Gemma's: BPE, byte fallback,
    split digits, whitespace-only pieces allowed, the "identity" normaliser
    with no dummy prefix and no whitespace folding (spaces become `▁`).
    Field numbers are those of `sentencepiece_model.proto`; the
    sentencepiece library, keras-hub's `SentencePieceTokenizer` (through
    tensorflow-text) and transformers all read the result.

    Args:
        pieces: a list of `(piece, score, type)`, in id order; `type` is one of
            `SP_NORMAL`, `SP_UNKNOWN`, `SP_CONTROL`, `SP_USER_DEFINED`,
            `SP_BYTE`. Byte pieces are spelled `<0x00>`..`<0xFF>`.
        unk_id: the id of the unknown piece.
        bos_id: the id of the start piece.
        eos_id: the id of the end piece.
        pad_id: the id of the padding piece (non-negative).

    Returns:
        The serialised proto, as bytes.
    """
    out = b""
    for piece, score, kind in pieces:
        message = _field(1, 2, piece) + _field(2, 5, score) + _field(3, 0, kind)
        out += _field(1, 2, message)
    trainer = b"".join(
        [
            _field(3, 0, SP_BPE),  # model_type
            _field(4, 0, len(pieces)),  # vocab_size
            _field(10, 5, 1.0),  # character_coverage
            _field(20, 0, 16),  # max_sentencepiece_length
            _field(21, 0, True),  # split_by_unicode_script
            _field(22, 0, True),  # split_by_whitespace
            _field(23, 0, True),  # split_by_number
            _field(24, 0, False),  # treat_whitespace_as_suffix
            _field(25, 0, True),  # split_digits
            _field(26, 0, True),  # allow_whitespace_only_pieces
            _field(35, 0, True),  # byte_fallback
            _field(40, 0, unk_id),
            _field(41, 0, bos_id),
            _field(42, 0, eos_id),
            _field(43, 0, pad_id),
            _field(45, 2, pieces[unk_id][0]),  # unk_piece
            _field(46, 2, pieces[bos_id][0]),  # bos_piece
            _field(47, 2, pieces[eos_id][0]),  # eos_piece
            _field(48, 2, pieces[pad_id][0]),  # pad_piece
        ]
    )
    normalizer = b"".join(
        [
            _field(1, 2, "identity"),  # name
            _field(3, 0, False),  # add_dummy_prefix
            _field(4, 0, False),  # remove_extra_whitespaces
            _field(5, 0, True),  # escape_whitespaces
        ]
    )
    return out + _field(2, 2, trainer) + _field(3, 2, normalizer)


def gemma_pieces():
    """The pieces of the tiny Gemma tokenizer, in id order.

    Returns:
        A list of `(piece, score, type)`: Gemma's specials (`<pad>` 0,
        `<eos>` 1, `<bos>` 2, `<unk>` 3, then `<mask>`, `<start_of_turn>`,
        `<end_of_turn>` as user-defined symbols), the 256 byte pieces, then
        normal pieces: `▁`, ASCII letters, digits, a little punctuation and
        `é`, followed by the merges that build `WORDS` without digits
        (spaces as `▁`) and `▁▁`. Normal pieces score `-rank`, so a
        merge's priority is its id.
    """
    pieces = [(piece, 0.0, kind) for piece, kind in GEMMA_SPECIALS]
    pieces += [(f"<0x{byte:02X}>", 0.0, SP_BYTE) for byte in range(256)]
    # Gemma splits digits: no piece holds two.
    words = [w.replace(" ", SP_SPACE) for w in WORDS if not any(c.isdigit() for c in w)]
    words.append(SP_SPACE * 2)
    normal = GEMMA_CHARACTERS + [left + right for left, right in chain_merges(words)]
    pieces += [(piece, -float(rank), SP_NORMAL) for rank, piece in enumerate(normal)]
    return pieces


# --- weights and files ----------------------------------------------------------


class _Draw:
    """Seeded float32 draws, in the order they are asked for."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, std):
        return (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(
            np.float32
        )

    def scale(self, shape, offset=1.0, std=0.1):
        """Normalisation weights around `offset` (1 for LayerNorm and RMSNorm
        scales, 0 for Gemma's `1 + weight` convention)."""
        return (offset + self.normal(shape, std)).astype(np.float32)


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _write_weights(directory, tensors):
    safetensors.numpy.save_file(
        tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"}
    )


def _config(defaults, overrides):
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"Unknown config keys: {unknown}. Known keys: {sorted(defaults)}."
        )
    return {**defaults, **overrides}


def file_hashes(directory):
    """The SHA-256 of every file in a checkpoint directory.

    Args:
        directory: a directory written by one of the `write_*` functions.

    Returns:
        A dict `{file name: hex digest}`, sorted by name.
    """
    hashes = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            hashes[name] = hashlib.sha256(f.read()).hexdigest()
    return hashes


# --- GPT-2 ----------------------------------------------------------------------


def write_gpt2(directory, seed=0, **config_overrides):
    """Write a tiny `GPT2LMHeadModel` checkpoint with its byte-level BPE.

    The configuration is GPT-2's with tiny dimensions: `n_embd=32`,
    `n_layer=2`, `n_head=4`, `n_positions=128`, `activation_function=
    "gelu_new"`, `layer_norm_epsilon=1e-5`, tied output embeddings,
    `<|endoftext|>` (the last id) as BOS and EOS and no padding token.
    The tokenizer is `vocab.json` + `merges.txt` (see `byte_level_bpe`);
    as GPT-2's, it adds no BOS.

    Args:
        directory: where to write; created if missing, files overwritten.
        seed: the seed of the weights.
        **config_overrides: `config.json` keys to replace (for example
            `n_layer=1`). `vocab_size` is the tokenizer's and `n_inner` must
            stay null: keras-hub's converter assumes `4 * n_embd`.

    Returns:
        `directory`, as a str.

    Example:
    ```python
    path = write_gpt2("/tmp/tiny-gpt2", seed=1)
    ```
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    vocabulary, merges = byte_level_bpe()
    vocabulary[GPT2_END] = len(vocabulary)
    end_id = vocabulary[GPT2_END]
    config = _config(
        {
            "activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"],
            "attn_pdrop": 0.1,
            "bos_token_id": end_id,
            "embd_pdrop": 0.1,
            "eos_token_id": end_id,
            "initializer_range": 0.02,
            "layer_norm_epsilon": 1e-05,
            "model_type": "gpt2",
            "n_ctx": 128,
            "n_embd": 32,
            "n_head": 4,
            "n_inner": None,
            "n_layer": 2,
            "n_positions": 128,
            "reorder_and_upcast_attn": False,
            "resid_pdrop": 0.1,
            "scale_attn_by_inverse_layer_idx": False,
            "scale_attn_weights": True,
            "summary_activation": None,
            "summary_first_dropout": 0.1,
            "summary_proj_to_labels": True,
            "summary_type": "cls_index",
            "summary_use_proj": True,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "use_cache": True,
            "vocab_size": len(vocabulary),
        },
        config_overrides,
    )
    hidden, layers = config["n_embd"], config["n_layer"]
    draw = _Draw(seed)
    tensors = {
        "transformer.wte.weight": draw.normal((len(vocabulary), hidden), 0.1),
        "transformer.wpe.weight": draw.normal((config["n_positions"], hidden), 0.05),
    }
    for i in range(layers):
        prefix = f"transformer.h.{i}."
        # Conv1D weights are [in, out].
        tensors.update(
            {
                prefix + "ln_1.weight": draw.scale((hidden,)),
                prefix + "ln_1.bias": draw.normal((hidden,), 0.05),
                prefix + "attn.c_attn.weight": draw.normal((hidden, 3 * hidden), 0.2),
                prefix + "attn.c_attn.bias": draw.normal((3 * hidden,), 0.05),
                prefix + "attn.c_proj.weight": draw.normal((hidden, hidden), 0.15),
                prefix + "attn.c_proj.bias": draw.normal((hidden,), 0.05),
                prefix + "ln_2.weight": draw.scale((hidden,)),
                prefix + "ln_2.bias": draw.normal((hidden,), 0.05),
                prefix + "mlp.c_fc.weight": draw.normal((hidden, 4 * hidden), 0.15),
                prefix + "mlp.c_fc.bias": draw.normal((4 * hidden,), 0.05),
                prefix + "mlp.c_proj.weight": draw.normal((4 * hidden, hidden), 0.1),
                prefix + "mlp.c_proj.bias": draw.normal((hidden,), 0.05),
            }
        )
    tensors["transformer.ln_f.weight"] = draw.scale((hidden,))
    tensors["transformer.ln_f.bias"] = draw.normal((hidden,), 0.05)
    _write_weights(directory, tensors)
    _write_json(os.path.join(directory, "config.json"), config)
    _write_json(
        os.path.join(directory, "generation_config.json"),
        {"bos_token_id": end_id, "eos_token_id": end_id},
    )
    _write_json(os.path.join(directory, "vocab.json"), vocabulary)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{left} {right}\n" for left, right in merges)
    specials = {"bos_token": GPT2_END, "eos_token": GPT2_END, "unk_token": GPT2_END}
    _write_json(os.path.join(directory, "special_tokens_map.json"), specials)
    _write_json(
        os.path.join(directory, "tokenizer_config.json"),
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            **specials,
            "clean_up_tokenization_spaces": False,
            "model_max_length": config["n_positions"],
            "tokenizer_class": "GPT2Tokenizer",
        },
    )
    return directory


# --- Llama ----------------------------------------------------------------------


def _decoder_tensors(draw, config, *, norm_offset, lm_head):
    """Llama/Gemma decoder weights in transformers' names and `[out, in]`."""
    hidden = config["hidden_size"]
    head_dim = config["head_dim"]
    queries = config["num_attention_heads"] * head_dim
    keys = config["num_key_value_heads"] * head_dim
    inner = config["intermediate_size"]
    tensors = {
        "model.embed_tokens.weight": draw.normal((config["vocab_size"], hidden), 0.1)
    }
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        tensors.update(
            {
                prefix + "input_layernorm.weight": draw.scale((hidden,), norm_offset),
                prefix + "self_attn.q_proj.weight": draw.normal((queries, hidden), 0.2),
                prefix + "self_attn.k_proj.weight": draw.normal((keys, hidden), 0.2),
                prefix + "self_attn.v_proj.weight": draw.normal((keys, hidden), 0.15),
                prefix + "self_attn.o_proj.weight": draw.normal(
                    (hidden, queries), 0.15
                ),
                prefix + "post_attention_layernorm.weight": draw.scale(
                    (hidden,), norm_offset
                ),
                prefix + "mlp.gate_proj.weight": draw.normal((inner, hidden), 0.15),
                prefix + "mlp.up_proj.weight": draw.normal((inner, hidden), 0.15),
                prefix + "mlp.down_proj.weight": draw.normal((hidden, inner), 0.1),
            }
        )
    tensors["model.norm.weight"] = draw.scale((hidden,), norm_offset)
    if lm_head:
        tensors["lm_head.weight"] = draw.normal((config["vocab_size"], hidden), 0.1)
    return tensors


def llama3_tokenizer_json(vocabulary, merges, specials):
    """A Llama 3 style `tokenizer.json` (byte-level BPE, BOS post-processor).

    Args:
        vocabulary: `{token: id}` of the BPE model (no specials).
        merges: the merge pairs, in priority order.
        specials: `{token: id}` of the added special tokens; the first is BOS.

    Returns:
        The `tokenizer.json` content as a dict: Llama 3's split regex then
        `ByteLevel` pre-tokenizer, a BPE with `ignore_merges=True`, a
        `TemplateProcessing` that prepends BOS, and merges as pairs (the
        form `tokenizers` >= 0.20 writes).
    """
    bos = next(iter(specials))

    def special(token):
        return {"SpecialToken": {"id": token, "type_id": 0}}

    def sequence(name, type_id=0):
        return {"Sequence": {"id": name, "type_id": type_id}}

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": index,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token, index in specials.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": LLAMA3_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {
                    "type": "ByteLevel",
                    "add_prefix_space": True,
                    "trim_offsets": False,
                    "use_regex": True,
                },
                {
                    "type": "TemplateProcessing",
                    "single": [special(bos), sequence("A")],
                    "pair": [
                        special(bos),
                        sequence("A"),
                        special(bos),
                        sequence("B", 1),
                    ],
                    "special_tokens": {
                        bos: {"id": bos, "ids": [specials[bos]], "tokens": [bos]}
                    },
                },
            ],
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocabulary,
            "merges": [list(pair) for pair in merges],
        },
    }


def write_llama(directory, seed=0, **config_overrides):
    """Write a tiny `LlamaForCausalLM` checkpoint with a Llama 3 tokenizer.

    The configuration: `hidden_size=32`, 2 layers, 4 query heads over 2
    key/value heads (`head_dim=8`), `intermediate_size=64`, `hidden_act=
    "silu"`, `rms_norm_eps=1e-5`, `rope_theta=10000.0` (top-level, as Hub
    checkpoints write it), no rope scaling, `tie_word_embeddings=false`.
    The tokenizer is `tokenizer.json` (see `llama3_tokenizer_json`) with
    the specials `<|begin_of_text|>` (BOS, added to every encoding),
    `<|end_of_text|>` (EOS), `<|start_header_id|>`, `<|end_header_id|>`
    and `<|eot_id|>` after the BPE vocabulary; there is no padding token.

    Args:
        directory: where to write; created if missing, files overwritten.
        seed: the seed of the weights.
        **config_overrides: `config.json` keys to replace, for example
            `rope_theta=500000.0` or `rms_norm_eps=1e-6`. `head_dim` must
            stay `hidden_size / num_attention_heads` (keras-hub derives it).

    Returns:
        `directory`, as a str.

    Example:
    ```python
    path = write_llama("/tmp/tiny-llama", rope_theta=500000.0)
    ```
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    vocabulary, merges = byte_level_bpe()
    specials = {token: len(vocabulary) + i for i, token in enumerate(LLAMA3_SPECIALS)}
    bos, eos = LLAMA3_SPECIALS[0], LLAMA3_SPECIALS[1]
    config = _config(
        {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": specials[bos],
            "eos_token_id": specials[eos],
            "head_dim": 8,
            "hidden_act": "silu",
            "hidden_size": 32,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "use_cache": True,
            "vocab_size": len(vocabulary) + len(specials),
        },
        config_overrides,
    )
    tensors = _decoder_tensors(_Draw(seed), config, norm_offset=1.0, lm_head=True)
    _write_weights(directory, tensors)
    _write_json(os.path.join(directory, "config.json"), config)
    _write_json(
        os.path.join(directory, "generation_config.json"),
        {"bos_token_id": specials[bos], "eos_token_id": specials[eos]},
    )
    _write_json(
        os.path.join(directory, "tokenizer.json"),
        llama3_tokenizer_json(vocabulary, merges, specials),
    )
    _write_json(
        os.path.join(directory, "special_tokens_map.json"),
        {"bos_token": bos, "eos_token": eos},
    )
    _write_json(
        os.path.join(directory, "tokenizer_config.json"),
        {
            "added_tokens_decoder": {
                str(index): {
                    "content": token,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for token, index in specials.items()
            },
            "bos_token": bos,
            "clean_up_tokenization_spaces": True,
            "eos_token": eos,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": config["max_position_embeddings"],
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    return directory


# --- Gemma ----------------------------------------------------------------------


def write_gemma(directory, seed=0, **config_overrides):
    """Write a tiny `GemmaForCausalLM` checkpoint with a SentencePiece model.

    The configuration: `hidden_size=32`, 2 layers, 4 query heads and one
    key/value head of `head_dim=16`, `intermediate_size=64`,
    `hidden_activation="gelu_pytorch_tanh"`, `rms_norm_eps=1e-6`,
    `rope_theta=10000.0`, tied embeddings (Gemma scales them by sqrt(32)
    and its RMSNorm weights are offsets: the scale is `1 + weight`). The
    tokenizer is `tokenizer.model` (see `gemma_pieces` and
    `sentencepiece_model_proto`); as Gemma's, it adds `<bos>` (id 2) and
    pads with `<pad>` (id 0); `<eos>` is id 1.

    Args:
        directory: where to write; created if missing, files overwritten.
        seed: the seed of the weights.
        **config_overrides: `config.json` keys to replace. keras-hub's
            converter reads neither `rope_theta` nor `rms_norm_eps`, so
            other values than the defaults make the two readers disagree.

    Returns:
        `directory`, as a str.

    Example:
    ```python
    path = write_gemma("/tmp/tiny-gemma")
    ```
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    pieces = gemma_pieces()
    ids = {piece: index for index, (piece, _, _) in enumerate(pieces)}
    config = _config(
        {
            "architectures": ["GemmaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": ids["<bos>"],
            "eos_token_id": ids["<eos>"],
            "head_dim": 16,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 32,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
            "model_type": "gemma",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "pad_token_id": ids["<pad>"],
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "use_cache": True,
            "vocab_size": len(pieces),
        },
        config_overrides,
    )
    tensors = _decoder_tensors(_Draw(seed), config, norm_offset=0.0, lm_head=False)
    _write_weights(directory, tensors)
    _write_json(os.path.join(directory, "config.json"), config)
    _write_json(
        os.path.join(directory, "generation_config.json"),
        {
            "bos_token_id": ids["<bos>"],
            "eos_token_id": ids["<eos>"],
            "pad_token_id": ids["<pad>"],
        },
    )
    proto = sentencepiece_model_proto(
        pieces,
        unk_id=ids["<unk>"],
        bos_id=ids["<bos>"],
        eos_id=ids["<eos>"],
        pad_id=ids["<pad>"],
    )
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(proto)
    specials = {
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    _write_json(os.path.join(directory, "special_tokens_map.json"), specials)
    _write_json(
        os.path.join(directory, "tokenizer_config.json"),
        {
            "add_bos_token": True,
            "add_eos_token": False,
            **specials,
            "clean_up_tokenization_spaces": False,
            "model_max_length": config["max_position_embeddings"],
            "spaces_between_special_tokens": False,
            "tokenizer_class": "GemmaTokenizer",
        },
    )
    return directory


WRITERS = {"gpt2": write_gpt2, "llama": write_llama, "gemma": write_gemma}
