"""Fetch missing task files from their public sources into the data directory.

Each built-in task names the files it reads, their path inside the data directory, the public URL they were
taken from (raw GitHub files at the commits recorded in shared/data/*/PROVENANCE.md) and their sha256
(computed from the copies whose sha1 PROVENANCE.md records). A download streams to a temporary file beside
the target, is checked against the sha256, and is renamed into place only when it matches, so an
interrupted or corrupt transfer never leaves a file that looks complete.

A mirror can replace the public sources: ``base_url`` (or $MINITUNE_DATA_URL) is joined with the file's path
inside the data directory, e.g. ``http://mirror/data`` + ``/goemotions/train.tsv``; ``file://`` URLs work too.
The held-out test splits are deliberately absent from the table (they are kept aside for final evaluation).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from minitune.errors import DataError

BASE_URL_ENV = "MINITUNE_DATA_URL"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    """One data file: where it lives under the data directory, where it comes from, what it must hash to."""

    path: str
    url: str
    sha256: str | None = None


_RAW = "https://raw.githubusercontent.com"
_HUMOR = f"{_RAW}/Ilovecodingforever/EECS-487-Humor-Classification/48a4cf795009b0f07a455019b7d60134884aa63e"
_SEMEVAL = f"{_RAW}/cbaziotis/ntua-slp-semeval2018/291038d032d9cc7604148345754958695eeb8f11/datasets/task1/E-c"
_GOEMO = f"{_RAW}/monologg/GoEmotions-pytorch/b75f9d3a8b76bc1060687925b04ca98a1b8ea66b/data/original"
_RECIPE = f"{_RAW}/D3Mlab/Recipe-MPR/6db37033ed6f2f6371933354369f6912cf85dbb8"

SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "humor": (
        RemoteFile(
            "hahackathon/train.csv",
            f"{_HUMOR}/train.csv",
            "e6da12a5d14f0bebfa336ab8014067c3a3d435eae5f45ea8004d862cb5065937",
        ),
        RemoteFile(
            "hahackathon/dev.csv",
            f"{_HUMOR}/dev.csv",
            "7c9eb3881ca77a576cd52545b8e26c0d2f28aa1b89d59f57b7420703a0016056",
        ),
    ),
    "semeval": (
        RemoteFile(
            "semeval2018_ec/2018-E-c-En-train.txt",
            f"{_SEMEVAL}/E-c-En-train.txt",
            "498893ef1ecc5698d44ba9fd815d3ee88278f24fc549b202ddf36a4452f96675",
        ),
        RemoteFile(
            "semeval2018_ec/2018-E-c-En-dev.txt",
            f"{_SEMEVAL}/E-c-En-dev.txt",
            "1124cf56bd255fadea9e734a13133a9bd2202022f6d8a0ea560f076d8562517f",
        ),
    ),
    "goemotions": (
        RemoteFile(
            "goemotions/train.tsv",
            f"{_GOEMO}/train.tsv",
            "1c254a142be5c00e80d819b9ae1bbd36d94b2eeb8f4b1271846508d57e57d9c5",
        ),
        RemoteFile(
            "goemotions/dev.tsv",
            f"{_GOEMO}/dev.tsv",
            "575489c079c9de1097062a01738f998590d6b7ead66dd1c9fd1d2ba01fd8bc62",
        ),
        RemoteFile(
            "goemotions/emotions.txt",
            f"{_GOEMO}/labels.txt",
            "45c3ef86782d2a4d7fedcd6d8c111aa0d0e94720689bd164fac94fefb4495a89",
        ),
    ),
    "recipe-mpr": (
        RemoteFile(
            "recipe_mpr/500QA.json",
            f"{_RECIPE}/data/500QA.json",
            "ab61f4200e9c43d049b91e3de41878ea7a33e21ad395f0bf78beeb5bdc06e730",
        ),
        RemoteFile(
            "recipe_mpr/folds/5_fold_inds.json",
            f"{_RECIPE}/baselines/folds/5_fold_inds.json",
            "45955fc5181435e62faca415a7a58f43bc6c99891cda8cd6e6ac06e74a7c7f5b",
        ),
    ),
}


def source_url(remote: RemoteFile, base_url: str | None = None) -> str:
    """The URL to fetch: the public source, or ``base_url`` / $MINITUNE_DATA_URL joined with the file's path."""
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    if base is None:
        return remote.url
    return base.rstrip("/") + "/" + urllib.parse.quote(remote.path)


def ensure_task_files(
    task: str,
    data_dir: Path,
    *,
    only: Sequence[str] | None = None,
    base_url: str | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> list[Path]:
    """Make sure the files of a built-in task (or those of them named in ``only``) are in ``data_dir``.

    Missing files are downloaded; returns the local paths in table order. Files already present are trusted
    as they are (not re-hashed), so a user may drop in their own copy.
    """
    paths = []
    for remote in SOURCES[task]:
        if only is not None and remote.path not in only:
            continue
        dest = Path(data_dir) / remote.path
        if not dest.is_file():
            fetch(remote, Path(data_dir), base_url=base_url, timeout=timeout, progress=progress)
        paths.append(dest)
    return paths


def fetch(
    remote: RemoteFile,
    data_dir: Path,
    *,
    base_url: str | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> Path:
    """Download one table entry to ``data_dir / remote.path``; a failed transfer says where to put the file."""
    dest = Path(data_dir) / remote.path
    url = source_url(remote, base_url)
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # deepest first
    try:
        download(url, dest, remote.sha256, timeout=timeout, progress=progress, desc=remote.path)
    except _TransferError as exc:
        _remove_empty(made)
        public = f" (public source: {remote.url})" if url != remote.url else ""
        raise DataError(
            f"missing data file {dest}: download from {url} failed ({exc}); put {remote.path} there{public} "
            f"or point `data_dir` / $MINITUNE_DATA_DIR at a folder that has it"
        ) from None
    except BaseException:  # a checksum mismatch, or Ctrl-C in the middle of a download
        _remove_empty(made)
        raise
    return dest


def _remove_empty(folders: list[Path]) -> None:
    """Folders a failed download created, deepest first, removed while empty: nothing is left in the cache."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


class _TransferError(Exception):
    """The bytes could not be fetched (network, HTTP status, truncated body)."""


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    *,
    timeout: float = 30.0,
    progress: bool | None = None,
    desc: str | None = None,
) -> None:
    """Stream ``url`` to ``dest`` atomically, verifying ``sha256`` when given.

    ``progress=None`` shows the tqdm bar only on a terminal. A checksum mismatch raises DataError and leaves
    neither ``dest`` nor a temporary file behind; network failures raise _TransferError (see ``fetch``).
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed by the caller once the download is in)
            dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
        )
    except OSError as exc:
        raise DataError(
            f"{dest}: cannot write into {dest.parent} ({exc.strerror}); "
            f"choose a writable `data_dir` or $MINITUNE_DATA_DIR"
        ) from None
    tmp = Path(handle.name)
    try:
        with handle:
            digest = _stream(url, handle, timeout=timeout, progress=progress, desc=desc or dest.name)
        if sha256 is not None and digest != sha256:
            raise DataError(
                f"{dest}: the file downloaded from {url} has sha256 {digest}, expected {sha256} "
                f"(corrupt or changed at the source); nothing was kept, retry or put a verified "
                f"copy at {dest}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, out, *, timeout: float, progress: bool | None, desc: str) -> str:
    """Copy the response body into ``out`` chunk by chunk; returns the sha256 hex digest of the body."""
    hasher = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "minitune"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                leave=False,
                disable=None if progress is None else not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise _TransferError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _TransferError(str(exc.reason).replace("\n", " ")) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _TransferError(str(exc) or type(exc).__name__) from None
    if total is not None and received != total:
        raise _TransferError(f"connection closed after {received} of {total} bytes")
    return hasher.hexdigest()
