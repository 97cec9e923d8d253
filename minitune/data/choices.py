"""Questions with options, for `minitune predict` on a multiple-choice model.

A .json file holding an array of objects (Recipe-MPR's 500QA.json reads as it is) or a .jsonl file with one object
per line. Each object has a query (key `query` unless told otherwise) and its options (key `options`): a list of
texts, or an object mapping option ids to texts (Recipe-MPR). Any other keys (an id, an answer, query types) are
kept, to be written back beside the prediction. Items may have different numbers of options, two or more each.
Options keep the input's order: the model scores each one, so the order cannot matter to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minitune.data.readers import data_error, read_json, read_jsonl

SUFFIXES = (".json", ".jsonl", ".ndjson")


@dataclass
class ChoiceItem:
    """One question: its query, its option ids (the object's keys, or "0", "1", ... for a list) and texts, and every
    field of the record as a string (lists and objects as JSON), for the predictions file."""

    query: str
    option_ids: list[str]
    options: list[str]
    fields: dict[str, str]


def read_choice_items(path: Path, query_key: str = "query", options_key: str = "options") -> list[ChoiceItem]:
    """Every item of a .json array or .jsonl file; a bad item is an error naming its line (.jsonl) or index."""
    path = Path(path)
    suffix = path.suffix.lower()
    fix = f"write a JSON array (.json) or JSON Lines (.jsonl) of objects with {query_key!r} and {options_key!r}"
    if suffix not in SUFFIXES:
        raise data_error(path, None, f"a multiple-choice model reads .json or .jsonl, not {suffix or '(none)'!r}", fix)
    if suffix == ".json":
        records = read_json(path, _KeyCounts)
        if not isinstance(records, list) or not records:
            raise data_error(path, None, "expected a non-empty JSON array of items", fix)
        numbered = [(None, i, r) for i, r in enumerate(records)]
    else:
        numbered = [(line, None, r) for line, r in read_jsonl(path, _KeyCounts)]
    return [_item(path, line, index, record, query_key, options_key) for line, index, record in numbered]


class _KeyCounts(dict):
    """A JSON object that remembers a key it held twice (json keeps the last value silently): two options with one
    id would otherwise lose one of them."""

    def __init__(self, pairs):
        super().__init__(pairs)
        keys = [k for k, _ in pairs]
        self.repeated = next((k for k in keys if keys.count(k) > 1), None)


def _item(path: Path, line: int | None, index: int | None, record: Any, query_key: str, options_key: str) -> ChoiceItem:
    def error(problem: str, fix: str):
        return data_error(path, line, problem if index is None else f"item {index}: {problem}", fix)

    if not isinstance(record, dict):
        raise error(f"expected a JSON object, got {type(record).__name__}", "make every item a JSON object")
    query, options = record.get(query_key), record.get(options_key)
    if not isinstance(query, str) or not query.strip():
        present = ", ".join(repr(k) for k in record)
        raise error(f"missing or empty {query_key!r} (keys present: {present})", "name the query's key with `text_col`")
    if isinstance(options, _KeyCounts) and options.repeated is not None:
        raise error(f"option id {options.repeated!r} appears twice in {options_key!r}", "give every option its own id")
    if isinstance(options, dict):
        ids, texts = [str(k) for k in options], list(options.values())
    elif isinstance(options, list):
        ids, texts = [str(i) for i in range(len(options))], options
    else:
        raise error(
            f"{options_key!r} must be a list of option texts or an object of id: text",
            "name the options' key with `options_col`",
        )
    if len(texts) < 2 or not all(isinstance(t, str) and t.strip() for t in texts):
        raise error(f"{options_key!r} needs two or more non-empty option texts", "give every option a text")
    fields = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in record.items()}
    return ChoiceItem(query, ids, texts, fields)
