"""Tokenized texts kept on disk, so a sweep's trials, cv folds, `--seeds` members and a resume tokenize nothing twice.

The cache is one folder per encoding: the tokenizer (its tokenizer.json without the per-call truncation and padding
state, its special tokens, sides and length limit), the length settings (max_length, a long text's window overlap),
and the layout (plain, multiple choice, a bi-encoder's texts apart) hash to the folder's name. Inside, each example
is found by the hash of what the tokenizer reads of it (text, pair, options), so any subset, order, fold or seed of a
data set finds its rows; a changed file changes the changed rows' hashes only. Another tokenizer or length setting is
another folder: nothing stale is ever read.

A fine-tune opens the cache once for all its sets (data/features.open_cache), which reads every shard; each call
that tokenized something new adds one shard, `<hash of its rows>.npz`, written to a temporary name and renamed, so
concurrent writers (sweep workers, torchrun ranks) never see half a file and never overwrite each other's. Shards
hold integer arrays only and are read with allow_pickle=False. A shard that does not read (a torn disk, a foreign
file) or whose arrays do not fit together is skipped with a warning; a folder that cannot be written costs a
warning, not the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("minitune")

VERSION = 1  # bump when the shard layout or what a row holds changes


def default_folder() -> Path:
    """$MINITUNE_CACHE_DIR/tokens, else $XDG_CACHE_HOME/minitune/tokens, else ~/.cache/minitune/tokens."""
    if os.environ.get("MINITUNE_CACHE_DIR"):
        return Path(os.environ["MINITUNE_CACHE_DIR"]) / "tokens"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minitune" / "tokens"


def cache_folder(setting: str | None) -> Path | None:
    """`token_cache` as a folder: auto is default_folder(), off is None, anything else a path."""
    if setting in (None, "off"):
        return None
    return default_folder() if setting == "auto" else Path(setting).expanduser()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything about `tokenizer` that decides its ids (cached on the object: XLM-R's is ~17 MB of JSON)."""
    known = getattr(tokenizer, "_cache_fingerprint", None)
    if known is not None:
        return known
    spec = json.loads(tokenizer._tok.to_str())
    spec.pop("truncation", None), spec.pop("padding", None)  # set per call, not part of what the tokenizer is
    extra = [tokenizer.special_tokens, tokenizer.padding_side, tokenizer.truncation_side, tokenizer.model_max_length]
    digest = hashlib.sha256(json.dumps([spec, extra], sort_keys=True).encode()).hexdigest()
    tokenizer._cache_fingerprint = digest
    return digest


def example_key(ex) -> bytes:
    """What the tokenizer reads of an example, hashed (16 bytes)."""
    what = json.dumps([ex.text, ex.pair, list(ex.choices) if ex.choices else None], ensure_ascii=False)
    return hashlib.blake2b(what.encode(), digest_size=16).digest()


class TokenCache:
    """The cached encodings of one tokenizer at one length setting and layout (see the module docstring). Shards stay
    as their arrays (~9 bytes a token, plus an index entry a row); a row becomes lists of ids only when asked for."""

    def __init__(self, root: Path, tokenizer, layout: dict):
        self.tokenizer = tokenizer_fingerprint(tokenizer)
        name = hashlib.sha256(json.dumps([VERSION, self.tokenizer, layout], sort_keys=True).encode()).hexdigest()[:24]
        self.folder = Path(root) / name
        self.layout = layout
        self.nested = bool(layout.get("choices") or layout.get("overlap") is not None)  # rows of several sequences
        self.shards: list[_Shard] = []
        self.index: dict[bytes, tuple[int, int]] = {}  # example key -> (shard, row)
        self._read()

    def _read(self) -> None:
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    self._add(_Shard({k: z[k] for k in ("keys", "counts", "lengths", "ids", "types")}, self.nested))
            except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as err:
                log.warning("token cache: skipped %s (%s); delete it if it stays", shard, err)

    def _add(self, shard: _Shard) -> None:
        n = len(self.shards)
        self.shards.append(shard)
        self.index.update((key, (n, row)) for row, key in enumerate(shard.keys))

    def encode(self, examples: Sequence, encode: Callable[[list], list[dict]]) -> list[dict]:
        """Each example's encoding ({"input_ids", "token_type_ids"}, lists or per-choice lists of ids): from the
        cache, or by `encode` for those it lacks, which are then added."""
        keys = [example_key(ex) for ex in examples]
        missing = {}
        for key, ex in zip(keys, examples):
            if key not in self.index:
                missing.setdefault(key, ex)
        if missing:
            fresh = encode(list(missing.values()))
            arrays = _pack({k: [f["input_ids"], f["token_type_ids"]] for k, f in zip(missing, fresh)})
            self._add(_Shard(arrays, self.nested))
            self._write(arrays)
        hits = len(examples) - sum(1 for k in keys if k in missing)
        log.info("token cache %s: %d of %d examples read, %d tokenized", self.folder, hits, len(keys), len(missing))
        return [self.shards[i].row(r) for i, r in map(self.index.__getitem__, keys)]

    def _write(self, arrays: dict[str, np.ndarray]) -> None:
        name = hashlib.sha256(arrays["keys"].tobytes()).hexdigest()[:24] + ".npz"
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, self.folder / name)
        except OSError as err:
            log.warning("token cache: could not write to %s (%s); the run goes on without it", self.folder, err)
        finally:  # a failed or interrupted write leaves no temporary file (a finished one was renamed)
            with contextlib.suppress(OSError):
                tmp.unlink()


def _pack(rows: dict[bytes, list]) -> dict[str, np.ndarray]:
    """Rows -> flat arrays: per example its number of sequences (1, or one per option / window), per sequence its
    length, then every id and type id end to end."""
    keys, counts, lengths, ids, types = [], [], [], [], []
    for key, (input_ids, type_ids) in rows.items():
        nested = bool(input_ids) and isinstance(input_ids[0], list)  # one sequence per option or window
        seqs, tseqs = (input_ids, type_ids) if nested else ([input_ids], [type_ids])
        keys.append(np.frombuffer(key, dtype=np.uint8))
        counts.append(len(seqs) if nested else 0)  # 0: a plain row, one sequence not wrapped in a list
        for s, t in zip(seqs, tseqs):
            lengths.append(len(s))
            ids.extend(s)
            types.extend(t)
    return {
        "keys": np.stack(keys),
        "counts": np.asarray(counts, dtype=np.int32),
        "lengths": np.asarray(lengths, dtype=np.int32),
        "ids": np.asarray(ids, dtype=np.int64),
        "types": np.asarray(types, dtype=np.int8),
    }


class _Shard:
    """One shard's arrays (as _pack lays them out), checked, with where each row's sequences start. `nested`: the
    cache's rows hold one sequence per option or window; a plain cache's rows must all be plain (count 0)."""

    def __init__(self, a: dict[str, np.ndarray], nested: bool):
        flat = (a[k] for k in ("counts", "lengths", "ids", "types"))
        if a["keys"].ndim != 2 or any(v.ndim != 1 or v.dtype.kind not in "iu" for v in flat):
            raise ValueError("arrays of the wrong shape or type")
        keys, counts, lengths = a["keys"], a["counts"].astype(np.int64), a["lengths"].astype(np.int64)
        self.ids, self.types = a["ids"], a["types"]
        seqs = np.maximum(counts, 1)  # a plain row (count 0) is one sequence
        if len(keys) != len(counts) or seqs.sum() != len(lengths) or (counts < 0).any() or (lengths < 0).any():
            raise ValueError("inconsistent arrays")
        if lengths.sum() != len(self.ids) or len(self.ids) != len(self.types) or (not nested and counts.any()):
            raise ValueError("inconsistent arrays")
        self.keys = [k.tobytes() for k in keys]
        self.counts = counts.tolist()
        self.first_seq = np.concatenate([[0], np.cumsum(seqs)]).tolist()  # row -> its first sequence
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()  # sequence -> its first id

    def row(self, r: int) -> dict:
        """Row r as an encoding: plain lists of ids, or one list per option or window."""
        spans = [(self.starts[q], self.starts[q + 1]) for q in range(self.first_seq[r], self.first_seq[r + 1])]
        ids = [self.ids[a:b].tolist() for a, b in spans]
        types = [self.types[a:b].tolist() for a, b in spans]
        if self.counts[r]:
            return {"input_ids": ids, "token_type_ids": types}
        return {"input_ids": ids[0], "token_type_ids": types[0]}
