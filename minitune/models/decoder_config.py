"""A decoder's config.json (Llama, Qwen2, Gemma) parsed into `DecoderConfig`, the typed settings models/decoder.py
builds from; the arithmetic lives there.

Reference: transformers' `configuration_llama.py`, `configuration_qwen2.py`, `configuration_gemma.py` (defaults for
absent fields) and `modeling_rope_utils.py` (where RoPE settings are read). What must match (tests/test_decoder.py):
the reference's reading of the same file, in both layouts of the rope settings (transformers 4: rope_theta and
rope_scaling; 5: rope_parameters), Gemma's legacy "gelu" read as the tanh approximation, Qwen2's fixed q/k/v bias;
a feature we do not implement (sliding windows, partial rotary, per-layer-type RoPE) is an error naming the field,
never silently computed otherwise.

`model_type` is checked in one place, `DecoderConfig.__post_init__`, which every config passes through (from_hf
and direct construction alike); the family registry (models/__init__.py) sends only MODEL_TYPES here.
"""

from __future__ import annotations

from dataclasses import dataclass

from minitune.errors import ConfigError
from minitune.models.activations import ACTIVATIONS

MODEL_TYPES = ("llama", "qwen2", "gemma")
_ROPE_TYPES = ("default", "llama3")
# max_position_embeddings when config.json omits it: the reference's config class defaults.
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768, "gemma": 8192}


@dataclass
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default" or "llama3"
    rope_factor: float = 1.0  # llama3 only, as are the three fields below
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_plus_one: bool = False  # Gemma: x_norm * (1 + weight)
    scale_embeddings: bool = False  # Gemma: embeddings * sqrt(hidden)
    tie_word_embeddings: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        where = "config.json"
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{where}: model_type {self.model_type!r} is not a decoder family; use one of {', '.join(MODEL_TYPES)}"
            )
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{where}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; fix the head counts"
            )
        if self.head_dim % 2:
            raise ConfigError(f"{where}: head_dim={self.head_dim} is odd; rotary embeddings need an even head_dim")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"{where}: hidden_act={self.hidden_act!r} is not supported; use one of {', '.join(sorted(ACTIVATIONS))}"
            )
        if self.rope_type not in _ROPE_TYPES:
            raise ConfigError(
                f"{where}: rope type {self.rope_type!r} is not supported; "
                f"use one of {', '.join(_ROPE_TYPES)} (rope_parameters / rope_scaling)"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"{where}: pad_token_id={self.pad_token_id} is outside the vocabulary "
                f"(vocab_size={self.vocab_size}); set a valid pad_token_id"
            )

    @property
    def num_kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, d: dict) -> DecoderConfig:
        """A Hub config.json dict; rope settings in the transformers 4 layout (rope_theta, rope_scaling) or the 5
        layout (rope_parameters)."""
        kind = d.get("model_type")  # checked by __post_init__; the lookups below tolerate any value until then
        sizes = {
            k: _required(d, k)
            for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        }
        heads, gemma = sizes["num_attention_heads"], kind == "gemma"
        _reject_unsupported(d, kind, sizes["num_hidden_layers"])
        act = d.get("hidden_act") or ("gelu_pytorch_tanh" if gemma else "silu")
        if gemma and act == "gelu":  # the reference reads Gemma's legacy "gelu" as the tanh approximation
            act = "gelu_pytorch_tanh"
        attention_bias = bool(d.get("attention_bias", False))
        max_pos = d.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS.get(kind)
        return cls(
            model_type=kind,
            **sizes,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or (256 if gemma else sizes["hidden_size"] // heads),
            rms_norm_eps=d.get("rms_norm_eps") or 1e-6,
            hidden_act=act,
            max_position_embeddings=max_pos,
            **_rope_fields(d, max_pos),
            qkv_bias=True if kind == "qwen2" else attention_bias,
            o_bias=False if kind == "qwen2" else attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)) if kind == "llama" else False,
            norm_plus_one=gemma,
            scale_embeddings=gemma,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", gemma)),
            attention_dropout=float(d.get("attention_dropout") or 0.0),
            initializer_range=d.get("initializer_range") or 0.02,
            pad_token_id=d.get("pad_token_id", 0 if gemma else None),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )


def _required(d: dict, key: str) -> int:
    if d.get(key) is None:
        raise ConfigError(f"config.json: missing {key!r}; the file is incomplete, download it again")
    return d[key]


def _reject_unsupported(d: dict, kind: str, n_layers: int) -> None:
    """Features of these families we do not implement: fail loudly rather than compute something else."""
    if kind == "qwen2" and d.get("use_sliding_window"):
        first_sliding = d.get("max_window_layers", 28)
        if d.get("sliding_window", 4096) is not None and first_sliding < n_layers:
            raise ConfigError(
                "config.json: use_sliding_window=true is not supported; set it to false "
                "(sequences shorter than sliding_window give the same result)"
            )
    if "sliding_attention" in (d.get("layer_types") or []):
        raise ConfigError("config.json: layer_types has sliding_attention layers, which are not supported")
    if d.get("use_bidirectional_attention"):
        raise ConfigError("config.json: use_bidirectional_attention=true is not supported; only causal decoders")
    if d.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("config.json: partial_rotary_factor != 1 is not supported for llama/qwen2/gemma")


def _rope_fields(d: dict, max_pos: int) -> dict:
    """RoPE settings from either layout. Priority as the reference: rope_scaling, then rope_parameters; theta from
    inside that dict, else top-level rope_theta, else 10000."""
    p = d.get("rope_scaling") or d.get("rope_parameters") or {}
    if any(isinstance(v, dict) for v in p.values()):
        raise ConfigError("config.json: per-layer-type rope_parameters are not supported for llama/qwen2/gemma")
    if p.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("config.json: partial_rotary_factor != 1 is not supported for llama/qwen2/gemma")
    out = {
        "rope_theta": float(p.get("rope_theta", d.get("rope_theta", 10000.0))),
        "rope_type": p.get("rope_type", p.get("type", "default")),
    }
    if out["rope_type"] == "llama3":
        missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in p]
        if missing:
            raise ConfigError(f"config.json: llama3 rope scaling lacks {', '.join(missing)}; add them")
        # A top-level original_max_position_embeddings wins over the one in the dict, as in the reference.
        ctx = d.get("original_max_position_embeddings") or p.get("original_max_position_embeddings") or max_pos
        out.update(
            rope_factor=float(p["factor"]),
            rope_low_freq_factor=float(p["low_freq_factor"]),
            rope_high_freq_factor=float(p["high_freq_factor"]),
            rope_original_max_position_embeddings=ctx,
        )
    return out


def config_from_hf(d: dict) -> DecoderConfig:
    return DecoderConfig.from_hf(d)
