"""User data files for the custom task and for predict: delimited text (.csv, .tsv, .txt) or JSON Lines with a text,
a label and an optional pair column. The field separator of a delimited file is sniffed from its header line (tab,
comma, semicolon or bar), so a tab-separated file named .csv, or SemEval's official .txt, reads as it is.

Labels may be names or integers. A label cell holding several labels (comma-separated in CSV/TSV, a JSON list
in JSONL) makes the task multi-label; there an empty cell means "no label". Label names are the sorted
distinct labels of the training file (numerically when all are integers) unless the user gives them; with
given names, a cell may also hold a 0-based index into them. A dev or test file may not introduce labels the
training file lacks. Label names cannot contain commas (the comma separates labels).

This module only parses and maps labels; tasks.py turns the rows into Examples.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minitune.data.kinds import MULTI_LABEL, SINGLE_LABEL
from minitune.data.readers import SEPARATORS, data_error, read_delimited, read_jsonl, read_text, warn_skipped

_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}  # the default when sniffing finds none
DELIMITERS_BY_NAME = {name: char for char, name in SEPARATORS.items()}
_JSONL = (".jsonl", ".ndjson")
_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    label: str | None = "label"  # None: unlabelled input (predict)
    pair: str | None = None

    def needed(self) -> list[str]:
        return [c for c in (self.text, self.label, self.pair) if c]


@dataclass
class Row:
    """One parsed record before its labels are mapped to indices."""

    line: int
    text: str
    pair: str | None
    tokens: list[str]
    multi: bool  # the cell itself says multi-label (several labels, or a JSON list)
    fields: dict[str, str] | None = None  # every column of the record, for predictions joined back to their input


def read_rows(path: Path, columns: Columns, delimiter: str | None = None, keep_empty: bool = False) -> list[Row]:
    """Parse a custom file by extension; rows with an empty text are skipped with one DataWarning (`keep_empty`:
    kept, for predictions that must line up with their input). `delimiter`: the field separator of a delimited
    file (default: sniffed from its header)."""
    suffix = path.suffix.lower()
    if suffix in _DELIMITERS:
        rows = _delimited_rows(path, delimiter or sniff_delimiter(path, _DELIMITERS[suffix]), columns)
    elif suffix in _JSONL:
        rows = _jsonl_rows(path, columns)
    else:
        raise data_error(
            path, None, f"unsupported file type {suffix or '(none)'!r}", "use a .csv, .tsv, .txt or .jsonl file"
        )
    kept = [row for row in rows if row.text.strip()]
    if not kept:
        raise data_error(path, None, f"every row has an empty {columns.text!r}", "fill in the text column")
    if keep_empty:
        return rows
    warn_skipped(path, [row.line for row in rows if not row.text.strip()])
    return kept


def sniff_delimiter(path: Path, default: str) -> str:
    """The separator the header line uses most (tab, comma, semicolon, bar); `default` when it holds none."""
    header = read_text(path).splitlines()[0]
    counts = {d: header.count(d) for d in SEPARATORS}
    best = max(counts, key=lambda d: (counts[d], d == default))
    return best if counts[best] else default


def _column_fix(columns: Columns) -> str:
    flags = [
        f"`{name}`"
        for name, col in (("text_col", columns.text), ("label_col", columns.label), ("pair_col", columns.pair))
        if col or name == "pair_col"
    ]
    return f"choose the columns with {' / '.join(flags)}"


def _delimited_rows(path: Path, delimiter: str, columns: Columns) -> list[Row]:
    table = read_delimited(path, delimiter, header=True)
    fix = f"{_column_fix(columns)} (read as {SEPARATORS.get(delimiter, repr(delimiter))}-separated)"
    i_text = table.column(columns.text, fix)
    i_label = table.column(columns.label, fix) if columns.label else None
    i_pair = table.column(columns.pair, fix) if columns.pair else None
    rows = []
    for line, fields in table.rows:
        cell = fields[i_label] if i_label is not None else ""
        tokens = [token.strip() for token in cell.split(",") if token.strip()]
        _check_not_missing(path, line, tokens)
        pair = fields[i_pair] if i_pair is not None else None
        rows.append(Row(line, fields[i_text], pair, tokens, len(tokens) > 1, dict(zip(table.header, fields))))
    return rows


def _jsonl_rows(path: Path, columns: Columns) -> list[Row]:
    rows = []
    for line, record in read_jsonl(path):
        for key in columns.needed():
            if key not in record:
                present = ", ".join(repr(k) for k in record)
                raise data_error(path, line, f"missing key {key!r} (keys present: {present})", _column_fix(columns))
        # null is a missing text, as an empty CSV cell: skipped in training, kept in place by predict
        text = "" if record[columns.text] is None else _string(path, line, record, columns.text)
        pair = _string(path, line, record, columns.pair) if columns.pair else None
        tokens, multi = _json_label(path, line, record[columns.label]) if columns.label else ([], False)
        flat = {
            k: v if isinstance(v, str) else "" if v is None else json.dumps(v, ensure_ascii=False)
            for k, v in record.items()
        }
        rows.append(Row(line, text, pair, tokens, multi, flat))
    return rows


def _string(path: Path, line: int, record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise data_error(path, line, f"{key!r} must be a string, got {type(value).__name__}", "quote the value")
    return value


def _json_label(path: Path, line: int, value: Any) -> tuple[list[str], bool]:
    """A JSON label: a name, an integer, a comma-separated string, or a list of names/integers."""

    def token(item: Any) -> str:
        if isinstance(item, str):
            return item.strip()
        if isinstance(item, int) and not isinstance(item, bool):
            return str(item)
        raise data_error(
            path,
            line,
            f"label {item!r} is not a name or an integer",
            "write labels as strings, integers or a list of them",
        )

    if isinstance(value, list):
        tokens, multi = [t for t in map(token, value) if t], True
    elif isinstance(value, str):
        tokens = [t.strip() for t in value.split(",") if t.strip()]
        multi = len(tokens) > 1
    else:
        tokens, multi = [token(value)], False
    _check_not_missing(path, line, tokens)
    return tokens, multi


def _check_not_missing(path: Path, line: int, tokens: list[str]) -> None:
    """`nan` is how pandas writes a missing value, not a label: it would become a class of its own."""
    if any(t.lower() == "nan" for t in tokens):
        raise data_error(
            path, line, "label 'nan' is a missing value (as pandas writes one), not a label", "fill in or drop the row"
        )


def label_names_from(rows: list[Row]) -> list[str]:
    """Sorted distinct labels; numerically when every label is an integer."""
    distinct = {token for row in rows for token in row.tokens}
    if distinct and all(_INT.fullmatch(token) for token in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def infer_kind(path: Path, train: list[Row], others: list[Row], names: list[str]) -> str:
    """Multi-label when any cell of any file holds several labels (or a JSON list)."""
    kind = MULTI_LABEL if any(row.multi for row in train + others) else SINGLE_LABEL
    if kind == SINGLE_LABEL and len(names) < 2:
        raise data_error(
            path,
            None,
            f"only one label ({', '.join(names) or 'none'}) in the file",
            "a classifier needs at least two labels; check `label_col`",
        )
    return kind


def encode_labels(path: Path, rows: list[Row], names: list[str], kind: str, ids_allowed: bool) -> list[int | list[int]]:
    """Map each row's label tokens to a class index (single-label) or a multi-hot list (multi-label).

    ``ids_allowed``: an integer token that is not a label name is read as a 0-based index into ``names``
    (only when the user gave the names; otherwise integers are names themselves).
    """
    index = {name: i for i, name in enumerate(names)}
    labels: list[int | list[int]] = []
    for row in rows:
        ids = [_label_index(path, row.line, token, index, names, ids_allowed) for token in row.tokens]
        if kind == MULTI_LABEL:
            hot = [0] * len(names)
            for i in ids:
                hot[i] = 1
            labels.append(hot)
        elif len(ids) == 1:
            labels.append(ids[0])
        else:
            problem = "empty label" if not ids else f"{len(ids)} labels in a single-label task"
            raise data_error(path, row.line, problem, "give exactly one label per row")
    return labels


def _label_index(path: Path, line: int, token: str, index: dict[str, int], names: list[str], ids_allowed: bool) -> int:
    if token in index:
        return index[token]
    if ids_allowed and _INT.fullmatch(token):
        if 0 <= int(token) < len(names):
            return int(token)
        raise data_error(
            path,
            line,
            f"label id {token} out of range 0..{len(names) - 1}",
            "ids are 0-based positions in `label_names`",
        )
    known = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise data_error(
        path,
        line,
        f"unknown label {token!r} (known labels: {known})",
        "use a label of the training file or list it in `label_names`",
    )
