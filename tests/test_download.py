"""Tests for minitune.data.download against a real HTTP server on 127.0.0.1 serving copies of the real files.

The checksum table is checked against the shared files, whose sha1 is checked against PROVENANCE.md; the
source URLs are checked against the commits PROVENANCE.md records. Copies live in tmp_path only.
"""

import functools
import hashlib
import re
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from minitune.data.download import SOURCES, download, ensure_task_files, fetch
from minitune.data.tasks import load_task
from minitune.errors import DataError

SERVED = [f for task in ("humor", "semeval", "goemotions", "recipe-mpr") for f in SOURCES[task]]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Local requests must not go through a proxy configured in the environment."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("MINITUNE_DATA_URL", raising=False)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, data_dir):
    """A tmp copy of the four tasks' files in the data-directory layout."""
    root = tmp_path / "mirror"
    for remote in SERVED:
        (root / remote.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / remote.path, root / remote.path)
    return root


@pytest.fixture
def server(mirror):
    """http.server on an ephemeral 127.0.0.1 port serving the mirror; shut down after the test."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(mirror)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _sha(path, algo):
    return hashlib.new(algo, path.read_bytes()).hexdigest()


def test_table_matches_shared_files_and_provenance(data_dir):
    for files in SOURCES.values():
        for remote in files:
            local = data_dir / remote.path
            assert _sha(local, "sha256") == remote.sha256, remote.path
            folder = remote.path.split("/")[0]
            provenance = (data_dir / folder / "PROVENANCE.md").read_text(encoding="utf-8")
            name = remote.path.split("/", 1)[1]
            row = re.search(rf"\| `{re.escape(name)}` \| [\d,]+ \| `([0-9a-f]{{40}})`", provenance)
            assert row and row.group(1) == _sha(local, "sha1"), remote.path
            commit = re.search(r"/([0-9a-f]{40})/", remote.url).group(1)
            assert remote.url.startswith("https://raw.githubusercontent.com/") and commit in provenance


def test_download_then_load(server, mirror, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("MINITUNE_DATA_URL", server)
    task = load_task("humor", data)  # train.csv and dev.csv are fetched from the server
    assert (len(task.train), len(task.dev)) == (8000, 1000)
    recipe = load_task("recipe-mpr", data)
    assert len(recipe.train) == 500 and len(recipe.folds) == 5
    semeval, goemotions = load_task("semeval", data), load_task("goemotions", data)
    assert (len(semeval.train), len(semeval.dev), semeval.num_labels) == (6838, 886, 11)
    assert (len(goemotions.train), len(goemotions.dev), goemotions.num_labels) == (43410, 5426, 28)
    for remote in SERVED:
        assert (data / remote.path).read_bytes() == (mirror / remote.path).read_bytes()
    leftovers = [p for p in data.rglob("*") if p.is_file() and p.name.endswith(".part")]
    assert leftovers == []


def test_progress_bar_and_file_urls(mirror, tmp_path):
    remote = SOURCES["recipe-mpr"][1]
    fetch(remote, tmp_path / "a", base_url=mirror.as_uri(), progress=True)
    assert _sha(tmp_path / "a" / remote.path, "sha256") == remote.sha256


def test_corrupt_file_fails_checksum_and_leaves_nothing(server, mirror, tmp_path):
    served = mirror / "hahackathon" / "dev.csv"
    served.write_bytes(served.read_bytes().replace(b"1", b"0", 1))
    data = tmp_path / "data"
    with pytest.raises(DataError) as excinfo:
        ensure_task_files("humor", data, base_url=server)
    message = str(excinfo.value)
    assert "\n" not in message and "sha256" in message and str(data / "hahackathon" / "dev.csv") in message
    assert sorted(p.name for p in (data / "hahackathon").iterdir()) == ["train.csv"]  # no dev.csv, no .part


def test_unreachable_server_names_missing_file(tmp_path, monkeypatch):
    with socket.socket() as s:  # find a port, then close it so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MINITUNE_DATA_URL", f"http://127.0.0.1:{port}")
    data = tmp_path / "data"
    with pytest.raises(DataError) as excinfo:
        load_task("humor", data)
    message = str(excinfo.value)
    expected = data / "hahackathon" / "train.csv"
    assert "\n" not in message and f"missing data file {expected}" in message
    assert "put hahackathon/train.csv there" in message
    assert not expected.exists() and not data.exists()  # nothing left behind: no file, no empty folder


def test_http_error_names_missing_file(server, mirror, tmp_path):
    (mirror / "recipe_mpr" / "folds" / "5_fold_inds.json").unlink()
    data = tmp_path / "data"
    with pytest.raises(DataError) as excinfo:
        ensure_task_files("recipe-mpr", data, base_url=server)
    assert "HTTP 404" in str(excinfo.value)
    assert str(data / "recipe_mpr" / "folds" / "5_fold_inds.json") in str(excinfo.value)


def test_download_without_checksum(server, tmp_path):
    dest = tmp_path / "x" / "dev.csv"
    download(f"{server}/hahackathon/dev.csv", dest, None, timeout=5)
    assert _sha(dest, "sha256") == SOURCES["humor"][1].sha256


def test_run_py_downloads_into_the_default_data_dir(server, tmp_path, monkeypatch):
    """The whole path a user takes: no --data-dir, $MINITUNE_DATA_DIR names an empty folder, run.py fetches."""
    from minitune.cli import main

    monkeypatch.setenv("MINITUNE_DATA_URL", server)
    monkeypatch.setenv("MINITUNE_DATA_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert (
        main(
            [
                "--task",
                "semeval",
                "--model",
                "ffnn",
                "--max-train-samples",
                "32",
                "--max-eval-samples",
                "16",
                "--epochs",
                "1",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    assert (tmp_path / "cache" / "semeval2018_ec" / "2018-E-c-En-train.txt").is_file()
    assert (out / "results.json").is_file()
