"""A checkpoint's tokenizer files, read and written: the pipeline, its special tokens and its settings.

What it does: reads tokenizer.json (or, without one, a SentencePiece spm.model), tokenizer_config.json,
special_tokens_map.json and config.json's model_type; resolves the named special tokens as transformers does
(class defaults, then tokenizer_config.json, then special_tokens_map.json); rebuilds the pipeline parts that
transformers 5 does not take from tokenizer.json; and writes the three files back so that both
`Tokenizer.from_dir` and transformers' `AutoTokenizer` load the same ids. The Tokenizer itself (encoding,
truncation, padding) is in tokenizer.py.

What must match transformers 5 (AutoTokenizer on the same directory):
- for the BERT, DistilBERT, RoBERTa and XLM-R classes transformers 5 does not run the tokenizer.json pipeline
  as stored: it rebuilds the normaliser, pre-tokeniser and post-processor from the class and
  tokenizer_config.json (do_lower_case, add_prefix_space, ...). `rebuild_like_reference` does the same,
  so that e.g. XLM-R collapses repeated spaces and RoBERTa honours add_prefix_space from the config;
- the settings a tokenizer.json may carry for truncation and padding are not written back (all-MiniLM's asks
  for fixed padding to 128), as transformers ignores them when called.

References: transformers 5.x `TokenizersBackend` and the BERT / RoBERTa / XLM-R tokenizer classes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import normalizers, pre_tokenizers, processors

from minitune.data.spm import find_spm, spm_tokenizer
from minitune.errors import CheckpointError

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


@dataclass
class TokenizerFiles:
    """What a model directory's tokenizer files say: the pipeline, its class, its config and named special tokens."""

    tok: tokenizers.Tokenizer
    class_name: str | None
    config: dict[str, Any]  # tokenizer_config.json as read
    specials: dict[str, str]  # special-token name ("pad", "cls", ...) -> token

    def settings(self) -> dict[str, Any]:
        """The Tokenizer constructor's keyword arguments these files give."""
        limit = self.config.get("model_max_length")
        return {
            **{f"{n}_token": self.specials.get(n) for n in SPECIAL_NAMES},
            "model_max_length": int(limit) if isinstance(limit, (int, float)) and limit < _NO_LIMIT else None,
            "padding_side": self.config.get("padding_side", "right"),
            "truncation_side": self.config.get("truncation_side", "right"),
            "tokenizer_class": self.class_name,
            "config": {k: v for k, v in self.config.items() if k not in _DROPPED_CONFIG_KEYS},
        }


def read_tokenizer_files(directory: Path) -> TokenizerFiles:
    """Read tokenizer.json (else spm.model), tokenizer_config.json and special_tokens_map.json from `directory`."""
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
    return TokenizerFiles(tok, class_name, config, specials)


def write_tokenizer_files(out: Path, tok: tokenizers.Tokenizer, config: dict[str, Any], named: dict[str, str]) -> None:
    """Write tokenizer.json, tokenizer_config.json (`config`) and special_tokens_map.json (`named`) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    spec = json.loads(tok.to_str())
    spec["truncation"] = spec["padding"] = None  # the per-call settings must not be baked in
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", named)


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


def rebuild_like_reference(
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
