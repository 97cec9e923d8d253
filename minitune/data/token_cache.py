"""Tokenized texts kept on disk, so a sweep's trials, cv folds, `--seeds` members and a resume tokenize nothing twice.

The cache is one folder per encoding: the tokenizer (its tokenizer.json without the per-call truncation and padding
state, its special tokens, sides and length limit), the length settings (max_length, a long text's window overlap),
and the layout (plain, multiple choice, a bi-encoder's texts apart) hash to the folder's name. Inside, each example
is found by the hash of what the tokenizer reads of it (text, pair, options), so any subset, order, fold or seed of a
data set finds its rows; a changed file changes the changed rows' hashes only. Another tokenizer or length setting is
another folder: nothing stale is ever read.

Each run that tokenized something new adds one shard, `<hash of its rows>.npz`, written to a temporary name and
renamed, so concurrent writers (sweep workers, torchrun ranks) never see half a file and never overwrite each other's.
Shards hold integer arrays only and are read with allow_pickle=False. A shard that does not read (a torn disk, a
foreign file) is skipped with a warning; a folder that cannot be written costs a warning, not the run.
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
    """The cached encodings of one tokenizer at one length setting and layout (see the module docstring)."""

    def __init__(self, root: Path, tokenizer, layout: dict):
        name = hashlib.sha256(
            json.dumps([VERSION, tokenizer_fingerprint(tokenizer), layout], sort_keys=True).encode()
        ).hexdigest()[:24]
        self.folder = Path(root) / name
        self.layout = layout
        self.rows: dict[bytes, list] = {}
        self._read()

    def _read(self) -> None:
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    self.rows.update(_unpack(z))
            except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as err:
                log.warning("token cache: skipped %s (%s); delete it if it stays", shard, err)

    def encode(self, examples: Sequence, encode: Callable[[list], list[dict]]) -> list[dict]:
        """Each example's encoding ({"input_ids", "token_type_ids"}, lists or per-choice lists of ids): from the
        cache, or by `encode` for those it lacks, which are then added."""
        keys = [example_key(ex) for ex in examples]
        missing = {}
        for key, ex in zip(keys, examples):
            if key not in self.rows:
                missing.setdefault(key, ex)
        if missing:
            fresh = encode(list(missing.values()))
            new = {k: [f["input_ids"], f["token_type_ids"]] for k, f in zip(missing, fresh)}
            self.rows.update(new)
            self._write(new)
        hits = len(examples) - sum(1 for k in keys if k in missing)
        log.info("token cache %s: %d of %d examples read, %d tokenized", self.folder, hits, len(keys), len(missing))
        return [{"input_ids": self.rows[k][0], "token_type_ids": self.rows[k][1]} for k in keys]

    def _write(self, rows: dict[bytes, list]) -> None:
        arrays = _pack(rows)
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


def _unpack(z) -> dict[bytes, list]:
    keys, counts, lengths = z["keys"], z["counts"].tolist(), z["lengths"].tolist()
    ids, types = z["ids"].tolist(), z["types"].tolist()
    if keys.ndim != 2 or len(keys) != len(counts) or sum(lengths) != len(ids) or len(ids) != len(types):
        raise ValueError("inconsistent arrays")
    out, seq, pos = {}, 0, 0
    for key, count in zip(keys, counts):
        seqs, tseqs = [], []
        for _ in range(max(count, 1)):
            n = lengths[seq]
            seqs.append(ids[pos : pos + n])
            tseqs.append(types[pos : pos + n])
            seq, pos = seq + 1, pos + n
        out[key.tobytes()] = [seqs, tseqs] if count else [seqs[0], tseqs[0]]
    if seq != len(lengths):
        raise ValueError("inconsistent arrays")
    return out
