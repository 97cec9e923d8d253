"""Text to token ids: a thin wrapper around the Hugging Face `tokenizers` library.

What it does: encodes single texts and text pairs with special tokens, truncates "longest first" with the
budget counting the special tokens, and pads batches on the configured side. Reading and writing the tokenizer
files (tokenizer.json or spm.model, tokenizer_config.json, special_tokens_map.json) and the special-token and
pipeline rules that go with them are in tokenizer_files.py; `Tokenizer.from_dir` and `save_pretrained` call it.

References: the `tokenizers` library (normalise, pre-tokenise, model, post-process, truncate, pad — all the
real work happens there); transformers 5.x `TokenizersBackend` and the BERT / RoBERTa / XLM-R tokenizer
classes for the behaviour to reproduce.

What must match transformers (AutoTokenizer on the same directory, truncation=True, max_length=n):
- input_ids, token_type_ids and attention_mask of singles, pairs and padded batches;
- max_length=None truncates to model_max_length, as `truncation=True` does there;
- the settings a tokenizer.json may carry for truncation and padding are ignored (all-MiniLM's asks for
  fixed padding to 128), as transformers ignores them when called;
- the pipeline transformers 5 rebuilds from the tokenizer class (tokenizer_files.rebuild_like_reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
import torch

from minitune.data.tokenizer_files import (
    SPECIAL_NAMES,
    read_tokenizer_files,
    rebuild_like_reference,
    write_tokenizer_files,
)
from minitune.errors import ConfigError


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
        files = read_tokenizer_files(Path(path))
        wrapped = cls(files.tok, **files.settings())
        # After the constructor, so that special tokens missing from the vocabulary have ids.
        rebuild_like_reference(files.tok, files.class_name, files.config, files.specials)
        return wrapped

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; return the directory."""
        out = Path(directory)
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
        write_tokenizer_files(out, self._tok, config, named)
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

    def encode_windows(self, texts: Sequence[str], max_length: int, overlap: int) -> list[list[dict[str, list[int]]]]:
        """Each text as overlapping windows of at most max_length tokens with its special tokens, consecutive
        windows sharing `overlap` tokens (data/long_text.py): a list of windows per text, a short text's one."""
        limit = self._limit(max_length, pair=False)
        room = limit - self.num_special_tokens(False)
        if not 0 <= overlap < room:
            raise ConfigError(
                f"chunk_overlap={overlap} must be below the {room} text tokens of a {limit}-token window; lower it"
            )
        self._set_padding(None, limit)
        self._tok.enable_truncation(limit, stride=overlap, strategy="longest_first", direction="right")
        try:
            encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=True)
        finally:
            self._tok.no_truncation()  # `_set_truncation` restores the usual setting on the next call
        return [[{"input_ids": w.ids, "token_type_ids": w.type_ids} for w in (e, *e.overflowing)] for e in encodings]

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
