"""A Llama GGUF file as a Hub checkpoint: tensor names, the q/k row order, config.json and the tokenizer.

References: llama.cpp's convert_hf_to_gguf.py (Llama q/k row permutation, tensor names) and transformers' GGUF
loading path (modeling_gguf_pytorch_utils.py, integrations/gguf/), which tests/test_gguf.py checks against:
state-dict names and shapes are the Hub's with q/k rows back in rotate_half order, and the config fields and the
tokenizer's ids equal what transformers builds from the same file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from minitune.checkpoints.gguf import GGUFFile
from minitune.errors import CheckpointError

# ---------------------------------------------------------------------------------------------- Hub layout

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hub_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None for a name with no Hub twin."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    if len(parts) == 1 and stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs -> rotate_half halves).

    Per head the converter moves row s*half + j (s = which half, j < half) to row 2j + s: it views rows as
    (n_head, 2, half) and swaps the last two axes. The inverse views GGUF rows as (n_head, half, 2) and swaps back.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise CheckpointError(f"q/k projection with {rows} rows does not split into {n_head} heads of even size")
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (n_head, 2, half, in)


def _require_llama(g: GGUFFile) -> None:
    arch = g.metadata.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{g.path}: GGUF architecture {arch!r} is not supported; only 'llama' GGUF files "
            f"load, use the model's safetensors checkpoint instead"
        )


def _meta(g: GGUFFile, key: str, default: Any = ...) -> Any:
    if key in g.metadata:
        return g.metadata[key]
    if default is ...:
        raise CheckpointError(f"{g.path}: metadata key {key!r} is missing; the GGUF is incomplete")
    return default


def gguf_hub_tensors(g: GGUFFile) -> dict[str, tuple[tuple[int, ...], Callable[[], torch.Tensor]]]:
    """Hub name -> (torch shape, loader) for every tensor, dequantized only when its loader is called, so a loader
    that quantizes as it goes (QLoRA) never holds the whole float32 model."""
    _require_llama(g)
    n_head = _meta(g, "llama.attention.head_count")
    n_kv = _meta(g, "llama.attention.head_count_kv", n_head)

    def loader(name: str) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            w = g.tensor(name)
            if ".attn_q." in name:
                w = unpermute_qk(w, n_head)
            elif ".attn_k." in name:
                w = unpermute_qk(w, n_kv)
            return torch.from_numpy(w)

        return load

    out = {}
    for name, info in g.tensors.items():
        hub = hub_name(name)
        if hub is None:
            raise CheckpointError(
                f"{g.path}: tensor {name!r} has no Hub Llama counterpart (rope_freqs means Llama-3 "
                f"rope scaling, which GGUF loading does not support); use the safetensors checkpoint"
            )
        out[hub] = (info.shape, loader(name))
    return out


def gguf_to_state_dict(g: GGUFFile) -> dict[str, torch.Tensor]:
    """Every tensor as float32 under its Hub (transformers Llama) name; no lm_head when the embeddings are tied."""
    return {hub: load() for hub, (_, load) in gguf_hub_tensors(g).items()}


def gguf_to_hf_config(g: GGUFFile) -> dict[str, Any]:
    """A Hub-style config.json dict for the Llama model the file holds."""
    _require_llama(g)

    def m(key: str, default: Any = ...) -> Any:
        return _meta(g, f"llama.{key}", default)

    hidden, heads = m("embedding_length"), m("attention.head_count")
    head_dim = m("attention.key_length", hidden // heads)
    if m("rope.dimension_count", head_dim) != head_dim:
        raise CheckpointError(
            f"{g.path}: partial rotary (rope.dimension_count={m('rope.dimension_count')}, "
            f"head_dim={head_dim}) is not supported for llama"
        )
    vocab = m("vocab_size", None) or len(_meta(g, "tokenizer.ggml.tokens"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": m("feed_forward_length"),
        "num_hidden_layers": m("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": m("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": m("attention.layer_norm_rms_epsilon"),
        "rope_theta": m("rope.freq_base", 10000.0),
        "max_position_embeddings": m("context_length"),
        "vocab_size": vocab,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "bos_token_id": g.metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": g.metadata.get("tokenizer.ggml.padding_token_id"),
    }


# ---------------------------------------------------------------------------------------------- tokenizer

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
# pre-tokenizer names whose split is GPT-2's own regex (transformers builds ByteLevel(use_regex=True) for them)
GPT2_REGEX_PRE = ("default", "gpt-2", "gpt2", "smollm")


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes stand for themselves, the other 68
    bytes (controls, space, soft hyphen, ...) are given the characters from U+0100 upward, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def gguf_tokenizer(g: GGUFFile) -> tuple[Tokenizer, dict[str, str | None]]:
    """The file's byte-level BPE tokenizer, and its special token strings keyed as minitune.tokenizer.Tokenizer's
    keywords: {"bos_token", "eos_token", "pad_token", "unk_token"} (None where the file names no such id)."""
    _require_byte_level_bpe(g)
    tokens, types = _meta(g, "tokenizer.ggml.tokens"), g.metadata.get("tokenizer.ggml.token_type") or []
    alphabet = byte_alphabet()
    spelled = set(alphabet.values())
    # A token written in raw text rather than the byte alphabet is respelled, as the reference does.
    vocab = {
        t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)
    }
    tok = _byte_level_bpe(g, vocab)
    _add_typed_tokens(tok, tokens, types, vocab, spelled)
    specials = {
        name: (tokens[i] if (i := g.metadata.get(f"tokenizer.ggml.{key}")) is not None else None)
        for name, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("pad_token", "padding_token_id"),
            ("unk_token", "unknown_token_id"),
        )
    }
    _add_bos_eos(g, tok, specials)
    return tok, specials


def _require_byte_level_bpe(g: GGUFFile) -> None:
    """Only GPT-2 style byte-level BPE with GPT-2's own pre-tokenizer regex is rebuilt; others are errors."""
    kind, pre = g.metadata.get("tokenizer.ggml.model"), g.metadata.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise CheckpointError(
            f"{g.path}: tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2'); "
            f"use the model's tokenizer.json"
        )
    if pre not in GPT2_REGEX_PRE:
        raise CheckpointError(
            f"{g.path}: pre-tokenizer {pre!r} is not supported (only {', '.join(GPT2_REGEX_PRE)}); "
            f"use the model's tokenizer.json"
        )


def _byte_level_bpe(g: GGUFFile, vocab: dict[str, int]) -> Tokenizer:
    """The BPE model over the byte-alphabet vocabulary and the file's merges, with byte-level pre-tokenizer and
    decoder, as transformers builds it from the same file."""
    merges = [tuple(m.split(" ")) for m in _meta(g, "tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise CheckpointError(f"{g.path}: tokenizer.ggml.merges holds an entry that is not two tokens; corrupt file")
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _add_typed_tokens(
    tok: Tokenizer, tokens: list[str], types: list[int], vocab: dict[str, int], spelled: set[str]
) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens (llama.cpp token types)."""
    # Control tokens outside the byte alphabet would be mislabelled ones; the reference skips them too.
    tok.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t, k in zip(tokens, types)
            if k == _CONTROL and set(t) <= spelled
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, k in zip(tokens, types)
            if k == _USER_DEFINED and t in vocab
        ]
    )


def _add_bos_eos(g: GGUFFile, tok: Tokenizer, specials: dict[str, str | None]) -> None:
    """The file's add_bos/add_eos flags, as the post-processor a tokenizer.json would carry."""
    bos = specials["bos_token"] if g.metadata.get("tokenizer.ggml.add_bos_token") else None
    eos = specials["eos_token"] if g.metadata.get("tokenizer.ggml.add_eos_token") else None
    if bos is None and eos is None:
        return
    pre, post = ([bos] if bos else []), ([eos] if eos else [])
    single = " ".join([*pre, "$A", *post])
    pair = " ".join([*pre, "$A", *post, *pre, "$B:1", *post])
    ids = [(t, tok.token_to_id(t)) for t in dict.fromkeys(pre + post)]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
