"""Text to token ids: a thin wrapper around the Hugging Face `tokenizers` library.

What it does: loads a checkpoint's tokenizer.json (plus tokenizer_config.json and special_tokens_map.json),
encodes single texts and text pairs with special tokens, truncates "longest first" with the budget counting
the special tokens, pads batches on the configured side, and saves a directory that both `Tokenizer.from_dir`
and transformers' `AutoTokenizer` load back to the same ids.

References: the `tokenizers` library (normalise, pre-tokenise, model, post-process, truncate, pad — all the
real work happens there); transformers 5.x `TokenizersBackend` and the BERT / RoBERTa / XLM-R tokenizer
classes for the behaviour to reproduce.

What must match transformers (AutoTokenizer on the same directory, truncation=True, max_length=n):
- input_ids, token_type_ids and attention_mask of singles, pairs and padded batches;
- max_length=None truncates to model_max_length, as `truncation=True` does there;
- the settings a tokenizer.json may carry for truncation and padding are ignored (all-MiniLM's asks for
  fixed padding to 128), as transformers ignores them when called;
- for the BERT, DistilBERT, RoBERTa and XLM-R classes transformers 5 does not run the tokenizer.json pipeline
  as stored: it rebuilds the normaliser, pre-tokeniser and post-processor from the class and
  tokenizer_config.json (do_lower_case, add_prefix_space, ...). `_rebuild_like_reference` does the same,
  so that e.g. XLM-R collapses repeated spaces and RoBERTa honours add_prefix_space from the config.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
import torch
from tokenizers import normalizers, pre_tokenizers, processors

from minitune.data.spm import find_spm, spm_tokenizer
from minitune.errors import CheckpointError, ConfigError

SPECIAL_NAMES = ("pad", "bos", "eos", "unk", "cls", "sep", "mask")
# transformers writes int(1e30) for "no limit"; anything this large is treated as none.
_NO_LIMIT = 10**12

_BERT_DEFAULTS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
_ROBERTA_DEFAULTS = {
    "pad": "<pad>",
    "bos": "<s>",
    "eos": "</s>",
    "unk": "<unk>",
    "cls": "<s>",
    "sep": "</s>",
    "mask": "<mask>",
}
_CLASS_DEFAULTS = {
    "BertTokenizer": _BERT_DEFAULTS,
    "DistilBertTokenizer": _BERT_DEFAULTS,
    "RobertaTokenizer": _ROBERTA_DEFAULTS,
    "XLMRobertaTokenizer": _ROBERTA_DEFAULTS,
    "DebertaV2Tokenizer": {**_BERT_DEFAULTS, "bos": "[CLS]", "eos": "[SEP]"},
}
# Used when tokenizer_config.json names no class, as AutoTokenizer falls back on config.json's model_type.
_CLASS_OF_MODEL_TYPE = {
    "bert": "BertTokenizer",
    "distilbert": "BertTokenizer",
    "roberta": "RobertaTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "deberta-v2": "DebertaV2Tokenizer",
}
# Keys of a loaded tokenizer_config.json that must not be written back: they point at the old location
# or would make transformers prefer them over the tokenizer.json we write.
_DROPPED_CONFIG_KEYS = (
    "name_or_path",
    "tokenizer_file",
    "vocab_file",
    "merges_file",
    "added_tokens_decoder",
    "auto_map",
    "special_tokens_map_file",
)


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens, length limit and padding side of a checkpoint."""

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        *,
        pad_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        cls_token: str | None = None,
        sep_token: str | None = None,
        mask_token: str | None = None,
        model_max_length: int | None = 512,
        padding_side: str = "right",
        truncation_side: str = "right",
        tokenizer_class: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        """Wrap `tok` (taken over: its truncation and padding are switched off and set per call).

        `config` holds further tokenizer_config.json entries that save_pretrained writes back unchanged.
        """
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise ConfigError(f"{name}={side!r} is not valid: use 'left' or 'right'")
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.tokenizer_class = tokenizer_class
        self._config = dict(config or {})
        given = (pad_token, bos_token, eos_token, unk_token, cls_token, sep_token, mask_token)
        self.special_tokens: dict[str, str | None] = dict(zip(SPECIAL_NAMES, given))
        missing = [t for t in self.special_tokens.values() if t is not None and tok.token_to_id(t) is None]
        if missing:
            # transformers adds a named special token that the vocabulary lacks; do the same so ids agree.
            tok.add_special_tokens(sorted(set(missing), key=missing.index))

    # ---------------------------------------------------------------- loading and saving

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load tokenizer.json, tokenizer_config.json and special_tokens_map.json from a model directory."""
        directory = Path(path)
        tok_file = directory / "tokenizer.json"
        spm_file = find_spm(directory)
        if not tok_file.is_file() and spm_file is None:
            raise CheckpointError(
                f"{tok_file}: not found (nor a SentencePiece spm.model); minitune reads tokenizer.json: create it with "
                f"transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) or pass another model"
            )
        config = _read_json(directory / "tokenizer_config.json")
        class_name = _class_name(config, _read_json(directory / "config.json"))
        specials = _special_tokens(config, directory / "special_tokens_map.json", class_name)
        try:
            if tok_file.is_file():  # preferred when both exist
                tok = tokenizers.Tokenizer.from_file(str(tok_file))
            else:
                tok = _from_spm(spm_file, config, specials)
        except CheckpointError:
            raise
        except Exception as error:  # the Rust side raises a bare Exception on a bad file
            reason = " ".join(str(error).split())
            raise CheckpointError(
                f"{tok_file}: not a valid tokenizers file ({reason}): re-save the tokenizer "
                f"with transformers or `tokenizers`"
            ) from None
        limit = config.get("model_max_length")
        rest = {k: v for k, v in config.items() if k not in _DROPPED_CONFIG_KEYS}
        wrapped = cls(
            tok,
            **{f"{n}_token": specials.get(n) for n in SPECIAL_NAMES},
            model_max_length=int(limit) if isinstance(limit, (int, float)) and limit < _NO_LIMIT else None,
            padding_side=config.get("padding_side", "right"),
            truncation_side=config.get("truncation_side", "right"),
            tokenizer_class=class_name,
            config=rest,
        )
        # After the constructor, so that special tokens missing from the vocabulary have ids.
        _rebuild_like_reference(tok, class_name, config, specials)
        return wrapped

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; return the directory."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        spec = json.loads(self._tok.to_str())
        spec["truncation"] = spec["padding"] = None  # the per-call settings must not be baked in
        (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")
        named = {f"{n}_token": t for n, t in self.special_tokens.items() if t is not None}
        config = {
            **self._config,
            **named,
            "tokenizer_class": self.tokenizer_class or "TokenizersBackend",
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        else:
            config.pop("model_max_length", None)
        _write_json(out / "tokenizer_config.json", config)
        _write_json(out / "special_tokens_map.json", named)
        return out

    # ---------------------------------------------------------------- vocabulary

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens[name]
        return None if token is None else self._tok.token_to_id(token)

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad")

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos")

    def set_pad_to_eos(self) -> None:
        """Pad with the end-of-sequence token (decoders are often released without a pad token)."""
        if self.special_tokens["eos"] is None:
            raise ConfigError("the tokenizer has neither a pad nor an eos token: set pad_token explicitly")
        self.special_tokens["pad"] = self.special_tokens["eos"]

    def num_special_tokens(self, pair: bool = False) -> int:
        post = self._tok.post_processor
        return 0 if post is None else post.num_special_tokens_to_add(pair)

    # ---------------------------------------------------------------- encoding

    def encode(self, text: str, pair: str | None = None, max_length: int | None = None) -> list[int]:
        """Ids of one text (or pair) with special tokens, truncated to max_length (default model_max_length)."""
        # transformers encodes a single example with an empty pair as a single text; keep that.
        return self._encode([text], [pair] if pair else None, max_length, None)[0].ids

    def encode_text(self, text: str) -> list[int]:
        """Ids of text as written, without the special tokens the post-processor would add (a rendered chat
        template, a label after a prompt) and without truncation."""
        self._set_truncation(None)
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int | None = None
    ) -> list[dict[str, list[int]]]:
        """Unpadded input_ids / token_type_ids / attention_mask per text (or pair), truncated like encode."""
        encodings = self._encode(texts, pairs, max_length, None)
        return [
            {"input_ids": e.ids, "token_type_ids": e.type_ids, "attention_mask": e.attention_mask} for e in encodings
        ]

    def __call__(
        self,
        texts: str | Sequence[str],
        pairs: str | Sequence[str] | None = None,
        max_length: int | None = None,
        padding: str = "longest",
        return_tensors: bool = True,
    ) -> dict[str, Any]:
        """A padded batch: input_ids, token_type_ids, attention_mask as (B, T) long tensors (or nested lists).

        padding="longest" pads to the longest row, "max_length" to max_length (default model_max_length).
        """
        if padding not in ("longest", "max_length"):
            raise ConfigError(f"padding={padding!r} is not valid: use 'longest' or 'max_length'")
        if self.pad_token_id is None:
            raise ConfigError(
                "the tokenizer has no pad token, so batches cannot be padded: call "
                "set_pad_to_eos() (decoders) or give pad_token"
            )
        texts = [texts] if isinstance(texts, str) else texts
        pairs = [pairs] if isinstance(pairs, str) else pairs
        encodings = self._encode(texts, pairs, max_length, padding)
        batch = {
            "input_ids": [e.ids for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if not return_tensors:
            return batch
        width = len(batch["input_ids"][0]) if encodings else 0
        return {k: torch.tensor(v, dtype=torch.long).reshape(len(encodings), width) for k, v in batch.items()}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int | None, padding: str | None
    ) -> list[tokenizers.Encoding]:
        if isinstance(texts, str):
            texts = [texts]
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs: give one pair per text")
        limit = self._limit(max_length, pair=pairs is not None)
        self._set_truncation(limit)
        self._set_padding(padding, limit)
        inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
        return self._tok.encode_batch_fast(inputs, add_special_tokens=True)

    def _limit(self, max_length: int | None, pair: bool) -> int | None:
        limit = self.model_max_length if max_length is None else max_length
        if limit is None:
            return None
        floor = self.num_special_tokens(pair)
        if not isinstance(limit, int) or limit <= floor:
            raise ConfigError(
                f"max_length={limit!r} is too small: it must be an integer above the {floor} "
                f"special tokens each {'pair' if pair else 'text'} gets"
            )
        return limit

    def _set_truncation(self, limit: int | None) -> None:
        # The Rust tokenizer keeps truncation as state; touch it only when the wanted setting changes.
        if limit is None:
            if self._tok.truncation is not None:
                self._tok.no_truncation()
            return
        want = {"max_length": limit, "stride": 0, "strategy": "longest_first", "direction": self.truncation_side}
        current = self._tok.truncation
        if current is None or any(current.get(k) != v for k, v in want.items()):
            self._tok.enable_truncation(**want)

    def _set_padding(self, padding: str | None, limit: int | None) -> None:
        if padding is None:
            if self._tok.padding is not None:
                self._tok.no_padding()
            return
        if padding == "max_length" and limit is None:
            raise ConfigError("padding='max_length' needs max_length (the tokenizer has no model_max_length)")
        self._tok.enable_padding(
            direction=self.padding_side,
            pad_id=self.pad_token_id,
            pad_type_id=0,
            pad_token=self.special_tokens["pad"],
            length=limit if padding == "max_length" else None,
        )


# -------------------------------------------------------------------- helpers


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}): restore the file from the model's source") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}: restore the file")
    return value


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _special_tokens(config: dict[str, Any], map_file: Path, class_name: str | None) -> dict[str, str]:
    """Named special tokens: class defaults, then tokenizer_config.json, then special_tokens_map.json.

    transformers reads special_tokens_map.json only for configs without added_tokens_decoder (older saves).
    """
    sources = [config] if "added_tokens_decoder" in config else [config, _read_json(map_file)]
    specials = dict(_CLASS_DEFAULTS.get(class_name, {}))
    for source in sources:
        for name in SPECIAL_NAMES:
            value = source.get(f"{name}_token")
            if isinstance(value, dict):
                specials[name] = value["content"]
            elif isinstance(value, str):
                specials[name] = value
    return specials


def _class_name(config: dict[str, Any], model_config: dict[str, Any]) -> str | None:
    """tokenizer_config's class without the legacy 'Fast' suffix, else the class of config.json's model_type."""
    name = config.get("tokenizer_class")
    if isinstance(name, str):
        return name.removesuffix("Fast")
    return _CLASS_OF_MODEL_TYPE.get(model_config.get("model_type", ""))


def _rebuild_like_reference(
    tok: tokenizers.Tokenizer, class_name: str | None, config: dict[str, Any], specials: dict[str, str]
) -> None:
    """Replace the pipeline parts that transformers 5 rebuilds from the class instead of reading tokenizer.json."""
    ids = {name: tok.token_to_id(token) for name, token in specials.items()}
    if class_name in ("BertTokenizer", "DistilBertTokenizer"):
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=config.get("tokenize_chinese_chars", True),
            strip_accents=config.get("strip_accents"),
            lowercase=config.get("do_lower_case", True),
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_, sep = specials["cls"], specials["sep"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_}:0 $A:0 {sep}:0",
            pair=f"{cls_}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls_, ids["cls"]), (sep, ids["sep"])],
        )
    elif class_name == "RobertaTokenizer":
        add_prefix_space = bool(config.get("add_prefix_space", False))
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        tok.post_processor = processors.RobertaProcessing(
            (specials["sep"], ids["sep"]),
            (specials["cls"], ids["cls"]),
            trim_offsets=bool(config.get("trim_offsets", True)),
            add_prefix_space=add_prefix_space,
        )
    elif class_name == "XLMRobertaTokenizer":
        scheme = "always" if config.get("add_prefix_space", True) else "never"
        tok.normalizer = _precompiled_only(tok.normalizer)
        # Splitting on whitespace first collapses runs of spaces, as SentencePiece itself does.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)]
        )
        bos, eos = specials["bos"], specials["eos"]
        tok.post_processor = processors.TemplateProcessing(
            single=[bos, "$A", eos],
            pair=[bos, "$A", eos, eos, "$B", eos],
            special_tokens=[(bos, ids["bos"]), (eos, ids["eos"])],
        )


def _from_spm(path: Path, config: dict[str, Any], specials: dict[str, str]) -> tokenizers.Tokenizer:
    """A SentencePiece-only checkpoint (DeBERTa-v3's spm.model): `[CLS] A [SEP] B [SEP]` around its pieces."""
    if config.get("split_by_punct"):
        raise CheckpointError(f"{path.parent}: split_by_punct=true in tokenizer_config.json is not supported")
    cls_, sep = specials.get("cls") or "[CLS]", specials.get("sep") or "[SEP]"
    return spm_tokenizer(path, cls_, sep, lowercase=bool(config.get("do_lower_case", False)))


def _precompiled_only(normalizer: normalizers.Normalizer | None) -> normalizers.Normalizer | None:
    """The SentencePiece charsmap part of a normaliser (transformers' XLM-R keeps only that one), or None."""
    if normalizer is None:
        return None
    node = json.loads(normalizer.__getstate__())
    items = node.get("normalizers", []) if node.get("type") == "Sequence" else [node]
    for item in items:
        if item.get("type") == "Precompiled" and item.get("precompiled_charsmap"):
            return normalizers.Precompiled(base64.b64decode(item["precompiled_charsmap"]))
    return None
