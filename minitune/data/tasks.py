"""Task data: the four built-in data sets and user files, read into one small data model.

Tasks (shared/data/README.md and each PROVENANCE.md describe the files):
- ``humor``: HaHackathon (SemEval-2021 Task 7) CSV, binary ``is_humor``; mis-decoded UTF-8 is repaired.
- ``semeval``: SemEval-2018 Task 1 E-c English TSV, 11 emotions as 0/1 columns (multi-label; all-zero rows kept).
- ``goemotions``: GoEmotions TSV without header (text, comma-separated label ids, comment id), names from
  emotions.txt; texts that are CSV-quoted with doubled quotes are unquoted by the csv reader.
- ``recipe-mpr``: Recipe-MPR 500QA.json, 5-way multiple choice. The answer is always the first option in the
  file, so options are shuffled with ``numpy.random.default_rng(seed)`` (one permutation per item, in file
  order); ``folds`` is the paper's 5-fold protocol from folds/5_fold_inds.json.
- ``custom``: CSV / TSV / JSONL chosen by extension, with ``text_col``, ``label_col`` and optional ``pair_col``.

Policies: rows whose text is empty or blank are skipped, counted in one DataWarning per file (a model cannot
learn from them; a Recipe-MPR item with an empty query is an error instead, to keep the fold indices valid).
Everything else wrong in a file (missing column, unknown label, label id out of range, bytes that are not
UTF-8, a row with the wrong number of fields, an empty file) raises a one-line DataError naming the file and line.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minitune.data import custom
from minitune.data.download import ensure_task_files
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.readers import data_error, fix_mojibake, read_delimited, read_json, read_text, warn_skipped
from minitune.errors import ConfigError, DataError

TASKS = ("humor", "semeval", "goemotions", "recipe-mpr", "custom")
DATA_DIR_ENV = "MINITUNE_DATA_DIR"
HUMOR_LABELS = ["not_humor", "humor"]
_INT = re.compile(r"-?\d+")


@dataclass
class Example:
    """One input. ``label``: class index (single-label), multi-hot list (multi-label) or answer position.

    ``meta`` keys: ``line`` (where the row starts in its file; not for JSON arrays), ``id`` (the data set's
    id; the item index for Recipe-MPR), ``mojibake_fixed`` (humor), ``query_types``, ``option_ids`` (in
    shuffled order) and ``answer_id`` (recipe-mpr).
    """

    text: str
    pair: str | None = None
    label: int | list[int] | None = None
    choices: list[str] | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class TaskData:
    """A loaded task. ``folds`` (recipe-mpr) holds (train, val, test) index lists into ``train``.

    ``source`` records how the files were read (paths, columns, seed) so that ``load_eval_file`` can read a
    test file the same way.
    """

    name: str
    kind: str
    label_names: list[str]
    train: list[Example]
    dev: list[Example]
    folds: list[tuple[list[int], list[int], list[int]]] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


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


def _nonempty(path: Path, rows: list[tuple[int, list[str]]], text_index: int) -> list[tuple[int, list[str]]]:
    """Drop rows with blank text, warn once with their count; a file with no text at all is an error."""
    kept = [row for row in rows if row[1][text_index].strip()]
    if not kept:
        raise data_error(path, None, "every row has an empty text", "fill in the text column")
    warn_skipped(path, [line for line, fields in rows if not fields[text_index].strip()])
    return kept


# ---------------------------------------------------------------------------------------------- built-ins


def read_humor(path: Path) -> list[Example]:
    """HaHackathon CSV (header id,text,is_humor,...): label = is_humor (0/1)."""
    table = read_delimited(path, ",", header=True)
    fix = "the HaHackathon format has a header with id,text,is_humor"
    i_id, i_text, i_label = (table.column(name, fix) for name in ("id", "text", "is_humor"))
    examples = []
    for line, fields in _nonempty(path, table.rows, i_text):
        value = fields[i_label].strip()
        if value not in ("0", "1"):
            raise data_error(path, line, f"unknown is_humor label {value!r} (expected 0 or 1)", "fix the label")
        text = fix_mojibake(fields[i_text])
        meta: dict[str, Any] = {"id": fields[i_id], "line": line}
        if text != fields[i_text]:
            meta["mojibake_fixed"] = True
        examples.append(Example(text, label=int(value), meta=meta))
    return examples


def read_semeval(path: Path) -> tuple[list[str], list[Example]]:
    """SemEval-2018 E-c TSV: ID, Tweet, then one 0/1 column per emotion; returns (label names, examples)."""
    # Tweets are raw text (quotes included), so no CSV quoting: a stray quote must not swallow lines.
    table = read_delimited(path, "\t", header=True, quoting=csv.QUOTE_NONE)
    fix = "the SemEval-2018 E-c format has a header ID, Tweet, then the emotion columns"
    i_id, i_text = table.column("ID", fix), table.column("Tweet", fix)
    assert table.header is not None
    label_cols = [i for i in range(len(table.header)) if i not in (i_id, i_text)]
    if not label_cols:
        raise data_error(path, 1, "no emotion columns after ID and Tweet", fix)
    names = [table.header[i] for i in label_cols]
    examples = []
    for line, fields in _nonempty(path, table.rows, i_text):
        for name, i in zip(names, label_cols):
            if fields[i] not in ("0", "1"):
                raise data_error(
                    path, line, f"label {name!r} has value {fields[i]!r}, expected 0 or 1", "fix the label"
                )
        label = [int(fields[i]) for i in label_cols]
        examples.append(Example(fields[i_text], label=label, meta={"id": fields[i_id], "line": line}))
    return names, examples


def read_label_list(path: Path) -> list[str]:
    """One label name per line (GoEmotions emotions.txt); the line number is the label id."""
    names = [name.strip() for name in read_text(path).split("\n")]
    while names and not names[-1]:
        names.pop()
    if "" in names:
        raise data_error(path, names.index("") + 1, "empty label name", "write one name per line")
    return names


def read_goemotions(path: Path, num_labels: int) -> list[Example]:
    """GoEmotions TSV without header: text, comma-separated label ids, comment id."""
    table = read_delimited(path, "\t", header=False, n_fields=3)
    examples = []
    for line, (text, ids, comment_id) in _nonempty(path, table.rows, 0):
        label = [0] * num_labels
        for token in ids.split(","):
            token = token.strip()
            if not _INT.fullmatch(token):
                raise data_error(
                    path,
                    line,
                    f"label id {token!r} is not an integer",
                    "the second column holds comma-separated label ids",
                )
            if not 0 <= int(token) < num_labels:
                raise data_error(
                    path,
                    line,
                    f"label id {token} out of range 0..{num_labels - 1}",
                    "ids are 0-based line numbers of emotions.txt",
                )
            label[int(token)] = 1
        examples.append(Example(text, label=label, meta={"id": comment_id, "line": line}))
    return examples


def _item_error(path: Path, index: int, problem: str) -> DataError:
    return data_error(
        path,
        None,
        f"item {index}: {problem}",
        "each item needs a non-empty query, an options object and an answer among its keys",
    )


def read_recipe_mpr(path: Path, seed: int) -> list[Example]:
    """Recipe-MPR JSON array; options shuffled per item with one Generator seeded by ``seed``."""
    items = read_json(path)
    if not isinstance(items, list) or not items:
        raise data_error(path, None, "expected a non-empty JSON array of items", "use the 500QA.json format")
    rng = np.random.default_rng(seed)
    n_options = None
    examples = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _item_error(path, index, "not a JSON object")
        query, options, answer = item.get("query"), item.get("options"), item.get("answer")
        if not isinstance(query, str) or not query.strip():
            raise _item_error(path, index, "missing or empty 'query'")
        if not isinstance(options, dict) or len(options) < 2:
            raise _item_error(path, index, "'options' must map option ids to texts (two or more)")
        n_options = n_options or len(options)
        if len(options) != n_options:
            raise _item_error(path, index, f"{len(options)} options, the first item has {n_options}")
        if answer not in options:
            raise _item_error(path, index, f"answer {answer!r} is not one of the option ids")
        ids = list(options)
        order = [ids[j] for j in rng.permutation(len(ids))]
        types = item.get("query_type") or {}
        meta = {
            "id": index,
            "query_types": [name for name, flag in types.items() if flag],
            "option_ids": order,
            "answer_id": answer,
        }
        examples.append(Example(query, label=order.index(answer), choices=[str(options[o]) for o in order], meta=meta))
    return examples


def read_folds(path: Path, n: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Recipe-MPR fold file: a list of [train, val, test] index lists, 0-based positions in 500QA.json."""
    raw = read_json(path)
    fix = "each fold is [train, val, test] lists of 0-based item indices"
    if not isinstance(raw, list) or not raw:
        raise data_error(path, None, "expected a non-empty list of folds", fix)
    folds = []
    for k, fold in enumerate(raw):
        if not (isinstance(fold, list) and len(fold) == 3 and all(isinstance(part, list) for part in fold)):
            raise data_error(path, None, f"fold {k} is not three index lists", fix)
        for part in fold:
            bad = [i for i in part if not isinstance(i, int) or not 0 <= i < n]
            if bad:
                raise data_error(path, None, f"fold {k}: index {bad[0]!r} out of range 0..{n - 1}", fix)
        folds.append((list(fold[0]), list(fold[1]), list(fold[2])))
    return folds


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
) -> TaskData:
    """Read a task's train and dev examples.

    Built-in tasks read ``data_dir`` (default: ``resolve_data_dir(None)``), downloading missing files;
    ``train_file`` / ``dev_file`` replace the default files with others in the same format. ``custom`` needs
    ``train_file``; its dev file is optional (``dev`` is then empty and the caller holds out a split).
    Column options and ``delimiter`` (default: sniffed) apply to ``custom`` only. ``seed`` drives the Recipe-MPR
    option shuffle.
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
    task = TaskData(
        name,
        "",
        [],
        [],
        [],
        source={
            "train_file": str(train_path),
            "dev_file": str(dev_path) if dev_path else None,
            "seed": seed,
            "data_dir": str(root),
        },
    )
    _read_builtin_train(task, root, train_path, default_files=train_file is None)
    task.dev = load_eval_file(task, dev_path) if dev_path is not None else []
    return task


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
        return read_goemotions(path, task.num_labels)
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
