"""Task data: the four built-in data sets and user files, read into one small data model.

Tasks (shared/data/README.md and each PROVENANCE.md describe the files; builtin_tasks.py reads the four
built-in formats, custom.py the user's files, examples.py holds `Example` and `TaskData`):
- ``humor``: HaHackathon (SemEval-2021 Task 7) CSV, binary ``is_humor``.
- ``semeval``: SemEval-2018 Task 1 E-c English TSV, 11 emotions (multi-label).
- ``goemotions``: GoEmotions TSV without header, label names from emotions.txt (multi-label).
- ``recipe-mpr``: Recipe-MPR 500QA.json, 5-way multiple choice with shuffled options; ``folds`` is the paper's
  5-fold protocol from folds/5_fold_inds.json.
- ``custom``: CSV / TSV / JSONL chosen by extension, with ``text_col``, ``label_col`` and optional ``pair_col``.

This module decides which files a task reads (the data directory's defaults, downloaded when missing, or the
caller's), reads a test file the way its task's training file was read, and turns labels into arrays.

Policies: rows whose text is empty or blank are skipped, counted in one DataWarning per file (a model cannot
learn from them; a Recipe-MPR item with an empty query is an error instead, to keep the fold indices valid).
Everything else wrong in a file (missing column, unknown label, label id out of range, bytes that are not
UTF-8, a row with the wrong number of fields, an empty file) raises a one-line DataError naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minitune.data import custom
from minitune.data.builtin_tasks import (
    HUMOR_LABELS,
    read_folds,
    read_goemotions,
    read_humor,
    read_label_list,
    read_recipe_mpr,
    read_semeval,
)
from minitune.data.download import ensure_task_files
from minitune.data.examples import Example, TaskData
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.label_maps import TAXONOMIES, regroup_examples, taxonomy_labels
from minitune.data.readers import data_error
from minitune.errors import ConfigError, DataError

TASKS = ("humor", "semeval", "goemotions", "recipe-mpr", "custom")
# The built-in tasks' kinds, known before their files are read (a custom task's comes from its file).
BUILTIN_KINDS = {
    "humor": SINGLE_LABEL,
    "semeval": MULTI_LABEL,
    "goemotions": MULTI_LABEL,
    "recipe-mpr": MULTIPLE_CHOICE,
}
DATA_DIR_ENV = "MINITUNE_DATA_DIR"


def resolve_data_dir(cli_dir: str | None) -> Path:
    """--data-dir, else $MINITUNE_DATA_DIR, else $XDG_CACHE_HOME/minitune/data (or ~/.cache/minitune/data)."""
    chosen = cli_dir or os.environ.get(DATA_DIR_ENV)
    if chosen:
        path = Path(chosen).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME")
        path = (Path(cache).expanduser() if cache else Path.home() / ".cache") / "minitune" / "data"
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: the data directory is a file; pass `data_dir` (or $MINITUNE_DATA_DIR) a folder")
    return path


# ---------------------------------------------------------------------------------------------- loading

_DEFAULT_FILES = {  # task -> (train, dev) paths inside the data directory
    "humor": ("hahackathon/train.csv", "hahackathon/dev.csv"),
    "semeval": ("semeval2018_ec/2018-E-c-En-train.txt", "semeval2018_ec/2018-E-c-En-dev.txt"),
    "goemotions": ("goemotions/train.tsv", "goemotions/dev.tsv"),
    "recipe-mpr": ("recipe_mpr/500QA.json", None),
}
GOEMOTIONS_NAMES = "goemotions/emotions.txt"
RECIPE_FOLDS = "recipe_mpr/folds/5_fold_inds.json"


def load_task(
    name: str,
    data_dir: Path | None = None,
    *,
    seed: int = 42,
    train_file: str | Path | None = None,
    dev_file: str | Path | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
    pair_col: str | None = None,
    label_names: Sequence[str] | str | None = None,
    delimiter: str | None = None,
    taxonomy: str | None = None,
) -> TaskData:
    """Read a task's train and dev examples.

    Built-in tasks read ``data_dir`` (default: ``resolve_data_dir(None)``), downloading missing files;
    ``train_file`` / ``dev_file`` replace the default files with others in the same format. ``custom`` needs
    ``train_file``; its dev file is optional (``dev`` is then empty and the caller holds out a split).
    Column options and ``delimiter`` (default: sniffed) apply to ``custom`` only. ``seed`` drives the Recipe-MPR
    option shuffle. ``taxonomy`` (goemotions: ekman or sentiment) relabels every example in one of the data set's
    published coarser taxonomies (data/label_maps.py).
    """
    if name not in TASKS:
        raise ConfigError(f"`task` {name!r} is not a task; choose one of {', '.join(TASKS)}")
    if name == "custom":
        return _load_custom(train_file, dev_file, text_col, label_col, pair_col, label_names, delimiter)
    if any(option is not None for option in (text_col, label_col, pair_col, label_names)):
        raise ConfigError(
            f"`text_col`/`label_col`/`pair_col`/`label_names` apply to `task` custom only, not `task` {name}; drop them"
        )
    root = Path(data_dir) if data_dir is not None else resolve_data_dir(None)
    train_path, dev_path = _builtin_files(name, root, train_file, dev_file)
    source = {
        "train_file": str(train_path),
        "dev_file": str(dev_path) if dev_path else None,
        "seed": seed,
        "data_dir": str(root),
    }
    task = TaskData(name, "", [], [], [], source=source)
    _read_builtin_train(task, root, train_path, default_files=train_file is None)
    task.dev = load_eval_file(task, dev_path) if dev_path is not None else []
    if taxonomy is not None:
        _regroup(task, taxonomy)
    return task


def _regroup(task: TaskData, taxonomy: str) -> None:
    """GoEmotions in a coarser taxonomy: the labels become its groups, train and dev relabelled; `load_eval_file`
    relabels a test file the same way."""
    if task.name != "goemotions" or taxonomy not in TAXONOMIES:
        raise ConfigError(
            f"`taxonomy` {taxonomy!r}: goemotions takes {' or '.join(TAXONOMIES)}; drop it for {task.name}"
        )
    fine = task.label_names
    task.label_names = taxonomy_labels(taxonomy, fine)
    task.source |= {"taxonomy": taxonomy, "fine_labels": fine}
    task.train = regroup_examples(task.train, fine, taxonomy, task.label_names)
    task.dev = regroup_examples(task.dev, fine, taxonomy, task.label_names)


def _builtin_files(
    name: str, root: Path, train_file: str | Path | None, dev_file: str | Path | None
) -> tuple[Path, Path | None]:
    """The train and dev paths of a built-in task, after downloading the default files it will read."""
    default_train, default_dev = _DEFAULT_FILES[name]
    needed = [
        rel for rel, overridden in ((default_train, train_file), (default_dev, dev_file)) if rel and overridden is None
    ]
    needed += {"goemotions": [GOEMOTIONS_NAMES], "recipe-mpr": [RECIPE_FOLDS] if train_file is None else []}.get(
        name, []
    )
    ensure_task_files(name, root, only=needed)
    train_path = Path(train_file) if train_file is not None else root / default_train
    dev_path = Path(dev_file) if dev_file is not None else (root / default_dev if default_dev else None)
    return train_path, dev_path


def _read_builtin_train(task: TaskData, root: Path, path: Path, default_files: bool) -> None:
    """Fill kind, label names, train examples (and Recipe-MPR folds) of a built-in task."""
    if task.name == "humor":
        task.kind, task.label_names, task.train = SINGLE_LABEL, list(HUMOR_LABELS), read_humor(path)
    elif task.name == "semeval":
        task.kind = MULTI_LABEL
        task.label_names, task.train = read_semeval(path)
    elif task.name == "goemotions":
        task.kind, task.label_names = MULTI_LABEL, read_label_list(root / GOEMOTIONS_NAMES)
        task.train = read_goemotions(path, task.num_labels)
    else:
        task.kind = MULTIPLE_CHOICE
        task.train = read_recipe_mpr(path, task.source["seed"])
        task.label_names = [f"choice_{i}" for i in range(len(task.train[0].choices or []))]
        if default_files:  # the published folds index the published file only
            task.folds = read_folds(root / RECIPE_FOLDS, len(task.train))


def load_eval_file(task: TaskData, path: str | Path) -> list[Example]:
    """Read a labelled file in the task's format (``--test-file``), with the task's labels and settings."""
    path = Path(path)
    if task.name == "humor":
        return read_humor(path)
    if task.name == "semeval":
        names, examples = read_semeval(path)
        if names != task.label_names:
            raise data_error(
                path,
                1,
                f"emotion columns {names} differ from the training file's {task.label_names}",
                "use the same header as the training file",
            )
        return examples
    if task.name == "goemotions":
        taxonomy, fine = task.source.get("taxonomy"), task.source.get("fine_labels", task.label_names)
        examples = read_goemotions(path, len(fine))
        return regroup_examples(examples, fine, taxonomy, task.label_names) if taxonomy else examples
    if task.name == "recipe-mpr":
        examples = read_recipe_mpr(path, task.source["seed"])
        if len(examples[0].choices or []) != task.num_labels:
            raise data_error(
                path,
                None,
                f"{len(examples[0].choices or [])} options per item, the task has {task.num_labels}",
                "give every item the same number of options",
            )
        return examples
    if task.name == "custom":
        rows = custom.read_rows(path, _columns(task.source), task.source.get("delimiter"))
        return _custom_examples(path, rows, task.label_names, task.kind, task.source["label_names_given"])
    raise ConfigError(f"`task` {task.name!r} is not a task; choose one of {', '.join(TASKS)}")


def _columns(source: dict[str, Any]) -> custom.Columns:
    return custom.Columns(source["text_col"], source["label_col"], source["pair_col"])


def _custom_examples(
    path: Path, rows: list[custom.Row], names: list[str], kind: str, ids_allowed: bool
) -> list[Example]:
    labels = custom.encode_labels(path, rows, names, kind, ids_allowed)
    return [Example(row.text, pair=row.pair, label=label, meta={"line": row.line}) for row, label in zip(rows, labels)]


def _load_custom(train_file, dev_file, text_col, label_col, pair_col, label_names, delimiter=None) -> TaskData:
    if train_file is None:
        raise ConfigError("`task` custom needs `train_file` (a .csv, .tsv, .txt or .jsonl file)")
    if isinstance(label_names, str):
        label_names = [name.strip() for name in label_names.split(",") if name.strip()]
    given = bool(label_names)
    source = {
        "train_file": str(train_file),
        "dev_file": str(dev_file) if dev_file else None,
        "text_col": text_col or "text",
        "label_col": label_col or "label",
        "pair_col": pair_col,
        "label_names_given": given,
        "delimiter": delimiter,
    }
    train_path, dev_path = Path(train_file), Path(dev_file) if dev_file else None
    train_rows = custom.read_rows(train_path, _columns(source), delimiter)
    dev_rows = custom.read_rows(dev_path, _columns(source), delimiter) if dev_path else []
    names = list(label_names) if given else custom.label_names_from(train_rows)
    if len(set(names)) != len(names):
        raise ConfigError(f"`label_names` has duplicates ({', '.join(names)}); list each label once")
    kind = custom.infer_kind(train_path, train_rows, dev_rows, names)
    train = _custom_examples(train_path, train_rows, names, kind, given)
    dev = _custom_examples(dev_path, dev_rows, names, kind, given) if dev_path else []
    return TaskData("custom", kind, names, train, dev, source=source)


def label_array(task: TaskData, examples: Sequence[Example] | None = None) -> np.ndarray:
    """Labels as numpy for splitting and metrics: (N,) int64, or (N, L) uint8 multi-hot for multi-label."""
    chosen = task.train if examples is None else examples
    if task.kind == MULTI_LABEL:
        return np.array([ex.label for ex in chosen], dtype=np.uint8).reshape(len(chosen), task.num_labels)
    return np.array([ex.label for ex in chosen], dtype=np.int64)


def label_counts(kind: str, labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """Examples per label: of class ids (N,) or of a multi-hot matrix (N, L)."""
    labels = np.asarray(labels)
    if kind == MULTI_LABEL:
        counts = labels.reshape(len(labels), len(names)).sum(axis=0)
    else:
        counts = np.bincount(labels.astype(np.int64), minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts)}
