"""Readers for the files of the four built-in data sets (shared/data/README.md and each PROVENANCE.md).

- ``humor``: HaHackathon (SemEval-2021 Task 7) CSV, binary ``is_humor``; mis-decoded UTF-8 is repaired.
- ``semeval``: SemEval-2018 Task 1 E-c English TSV, 11 emotions as 0/1 columns (multi-label; all-zero rows kept).
- ``goemotions``: GoEmotions TSV without header (text, comma-separated label ids, comment id), names from
  emotions.txt; texts that are CSV-quoted with doubled quotes are unquoted by the csv reader.
- ``recipe-mpr``: Recipe-MPR 500QA.json, 5-way multiple choice. The answer is always the first option in the
  file, so options are shuffled with ``numpy.random.default_rng(seed)`` (one permutation per item, in file
  order); the paper's 5-fold protocol is read from folds/5_fold_inds.json.

The readers return `Example`s (and GoEmotions' label names, Recipe-MPR's folds), skipping blank texts as
tasks.py's policy says; which files a task reads, and how a test file is checked against its training file, is
decided there.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from minitune.data.examples import Example
from minitune.data.readers import data_error, fix_mojibake, read_delimited, read_json, read_text, warn_skipped
from minitune.errors import DataError

HUMOR_LABELS = ["not_humor", "humor"]
_INT = re.compile(r"-?\d+")


def _nonempty(path: Path, rows: list[tuple[int, list[str]]], text_index: int) -> list[tuple[int, list[str]]]:
    """Drop rows with blank text, warn once with their count; a file with no text at all is an error."""
    kept = [row for row in rows if row[1][text_index].strip()]
    if not kept:
        raise data_error(path, None, "every row has an empty text", "fill in the text column")
    warn_skipped(path, [line for line, fields in rows if not fields[text_index].strip()])
    return kept


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
