"""Low-level file readers for the task loaders: strict UTF-8, delimited rows with line numbers, JSON, JSON Lines.

Every problem a user can cause becomes a DataError whose message is one line:
``<file>: line <n>: <problem>; <fix>``. Nothing here knows about tasks or labels; tasks.py builds examples.

References: Python's csv module (RFC 4180 quoting: quoted fields, doubled inner quotes), JSON Lines
(https://jsonlines.org). ``fix_mojibake`` repairs text that was UTF-8 but got decoded as Latin-1 (the
HaHackathon files carry a few such texts, see shared/data/hahackathon/PROVENANCE.md).
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minitune.errors import DataError


class DataWarning(UserWarning):
    """Something in a data file was skipped or repaired; the run goes on."""


def data_error(path: Path | str, line: int | None, problem: str, fix: str) -> DataError:
    """Build the one-line DataError every reader raises."""
    where = f"{path}: line {line}: " if line is not None else f"{path}: "
    return DataError(f"{where}{problem}; {fix}".replace("\n", " "))


def warn_skipped(path: Path, lines: list[int]) -> None:
    """One DataWarning for all rows of a file skipped for an empty text, with their count and first lines."""
    if lines:
        shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
        warnings.warn(f"{path}: skipped {len(lines)} rows with empty text (lines {shown})", DataWarning, stacklevel=2)


def read_text(path: Path) -> str:
    """Whole file as text: UTF-8 (a BOM is accepted), refusing other encodings and empty files."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise data_error(path, None, "file not found", "check the path") from None
    except OSError as exc:
        raise data_error(path, None, f"cannot read the file ({exc.strerror})", "check the path") from None
    if not data.strip():
        raise data_error(path, None, "the file is empty", "give a file with a header and data rows")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.end]
        raise data_error(
            path, line, f"bytes {bad!r} are not valid UTF-8 ({exc.reason})", "re-save the file with UTF-8 encoding"
        ) from None


@dataclass
class Table:
    """Rows of a delimited file; ``rows`` holds (1-based line where the row starts, fields)."""

    path: Path
    header: list[str] | None
    rows: list[tuple[int, list[str]]]

    def column(self, name: str, fix: str) -> int:
        """Index of a header column, or a DataError listing the columns that are there."""
        assert self.header is not None
        if name not in self.header:
            present = ", ".join(repr(c) for c in self.header)
            raise data_error(self.path, 1, f"missing column {name!r} (columns present: {present})", fix)
        return self.header.index(name)


def read_delimited(
    path: Path, delimiter: str, *, header: bool, n_fields: int | None = None, quoting: int = csv.QUOTE_MINIMAL
) -> Table:
    """Parse a CSV/TSV file; every data row must have as many fields as the header (or ``n_fields``).

    Blank lines are ignored (in a one-column file, a line of spaces or `""` is a row whose one cell is empty).
    Quoted fields may span lines, so the line reported is where the row starts.
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if fields:
                rows.append((line, fields))
    except csv.Error as exc:
        raise data_error(
            path, start, f"malformed {_kind(delimiter)} ({exc})", "check the quoting on that line"
        ) from None
    names = None
    if header:
        while rows and len(rows[0][1]) == 1 and not rows[0][1][0].strip():
            rows.pop(0)  # blank lines above the header
        if not rows:
            raise data_error(path, None, "the file is empty", "give a file with a header and data rows")
        names = [name.strip() for name in rows.pop(0)[1]]
        n_fields = len(names)
    if n_fields != 1:  # a line of spaces is blank; in a one-column file it is a row whose text is empty
        rows = [(line, fields) for line, fields in rows if len(fields) > 1 or fields[0].strip()]
    if not rows:
        raise data_error(path, None, "no data rows (only a header)", "add data rows below the header")
    for line, fields in rows:
        if n_fields is not None and len(fields) != n_fields:
            raise data_error(
                path,
                line,
                f"row has {len(fields)} fields, expected {n_fields} (read as {SEPARATORS.get(delimiter, delimiter)}-"
                f"separated{_header_note(names)})",
                f"fix the {_kind(delimiter)} quoting or delimiters on that line",
            )
    return Table(path, names, rows)


SEPARATORS = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "bar"}  # the field separators sniffed, by name


def _header_note(names: list[str] | None) -> str:
    """What separators the header's one field holds, when the file was split on another one."""
    if not names or len(names) != 1:
        return ""
    found = [f"{names[0].count(c)} {name}s" for c, name in SEPARATORS.items() if c in names[0]]
    return f"; the header is one field holding {', '.join(found)}" if found else ""


def _kind(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def read_json(path: Path, object_pairs_hook=None) -> Any:
    """A whole-file JSON document (`object_pairs_hook`: as json.loads takes it)."""
    try:
        return json.loads(read_text(path), object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise data_error(
            path, exc.lineno, f"invalid JSON ({exc.msg} at column {exc.colno})", "fix the JSON syntax"
        ) from None


def read_jsonl(path: Path, object_pairs_hook=None) -> list[tuple[int, dict[str, Any]]]:
    """JSON Lines: one object per non-blank line, as (line number, object) (`object_pairs_hook`: as json.loads)."""
    records = []
    for number, raw in enumerate(read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw, object_pairs_hook=object_pairs_hook)
        except json.JSONDecodeError as exc:
            raise data_error(
                path, number, f"invalid JSON ({exc.msg} at column {exc.colno})", "write one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise data_error(
                path, number, f"expected a JSON object, got {type(record).__name__}", "write one JSON object per line"
            )
        records.append((number, record))
    if not records:
        raise data_error(path, None, "the file is empty", "write one JSON object per line")
    return records


# A UTF-8 multi-byte sequence whose bytes were read as Latin-1 characters (lead byte, continuation bytes).
_MISDECODED = re.compile(
    "[\u00c2-\u00df][\u0080-\u00bf]|[\u00e0-\u00ef][\u0080-\u00bf]{2}|[\u00f0-\u00f4][\u0080-\u00bf]{3}"
)
# C1 control characters never occur in real text; here they are stray bytes of broken emoji.
_C1_CONTROLS = re.compile("[\u0080-\u009f]")


def fix_mojibake(text: str) -> str:
    """Best-effort repair of UTF-8 text mis-decoded as Latin-1.

    Whole sequences are re-decoded (``Ã»`` -> ``û``, ``â\\x9d¤`` -> ``❤``); leftover C1 control characters
    (bytes of emoji whose other bytes were lost upstream) are removed. Genuine Latin-1 text such as
    ``José`` or ``piñata`` is left alone because a lone accented letter is not a valid UTF-8 sequence.
    """

    def redecode(match: re.Match[str]) -> str:
        try:
            return match.group().encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:  # overlong or surrogate forms: not mojibake, keep as is
            return match.group()

    return _C1_CONTROLS.sub("", _MISDECODED.sub(redecode, text))
