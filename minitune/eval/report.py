"""report.txt: a run's results as plain text a person can act on, also printed at the end of a run.

The parts (headline, tables, notes, the training's story) are eval/report_parts.py's, which report.html renders
too. The settings are those that shape the run (results.json's `settings`; config.json holds them all), as
wrapped `key=value`; a protocol's rows (folds, members) are a table of the columns a person compares.
"""

from __future__ import annotations

from minitune.eval.generations import format_generation_notes
from minitune.eval.report_parts import (
    KIND_NAMES,
    Table,
    confusion_table,
    groups_table,
    headline,
    notes,
    per_class_table,
    plain,
    splits,
    threshold_tables,
    train_scalars,
    train_tables,
    training_lines,
)
from minitune.eval.sources import source_tables

RULE = "=" * 72


def text_table(table: Table) -> list[str]:
    """Right-aligned number columns, the leading text columns left-aligned, two spaces between."""
    widths = [max(len(r[i]) for r in [table.header, *table.rows]) for i in range(len(table.header))]
    out = [table.title] if table.title else []
    for r in [table.header, *table.rows]:
        cells = [c.ljust(w) if i < table.left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def wrapped(title: str, items: list[str], width: int = 100) -> list[str]:
    """`title: a=1  b=2 ...` continued on indented lines so no line runs past `width`."""
    lines, line = [], f"{title}:"
    for item in items:
        if len(line) + 2 + len(item) > width and line.strip() != f"{title}:":
            lines.append(line)
            line = " " * (len(title) + 1)
        line += "  " + item
    return lines + [line]


def _header(results: dict, first: dict, settings: bool) -> list[str]:
    kind = KIND_NAMES.get(first["kind"], first["kind"])
    lines = [
        RULE,
        f"task: {results.get('task', '?')}  ({kind}, {len(first['label_names'])} labels)",
        f"model: {results.get('model', '?')}",
    ]
    if settings and results.get("settings"):
        lines += wrapped("settings", [f"{k}={plain(v)}" for k, v in results["settings"].items()])
    train = results.get("train")
    if isinstance(train, dict) and train:
        if "step" not in train and train_scalars(train):
            lines += wrapped("train", train_scalars(train))
        lines += training_lines(train)
        for table in train_tables(train):  # under its name, indented: a protocol's rows
            lines += [f"  {table.title}:", *("    " + ln for ln in text_table(Table("", table.header, table.rows)))]
    return lines


def _split_section(name: str, rep: dict, tuned_on: str | None) -> list[str]:
    lines = [
        RULE,
        f"{name} ({rep['n_examples']} examples)",
        "headline: " + headline(rep),
        "",
        *text_table(per_class_table(rep)),
    ]
    if "tuned" in rep:
        for table in threshold_tables(rep):
            lines += ["", *text_table(table)]
    if "confusion_matrix" in rep:
        lines += ["", *text_table(confusion_table(rep))]
    if "by_group" in rep:
        lines += ["", *text_table(groups_table(rep["by_group"]))]
    if "generation" in rep:  # --head generative: answers that name no label
        lines += ["", *format_generation_notes(rep["generation"])]
    said = notes(name, rep, tuned_on)
    return lines + (["", "notes:", *[f"- {n}" for n in said]] if said else [])


def format_report(results: dict, settings: bool = True) -> str:
    """Plain-text report of a results dict, ending with a newline. `settings`: list the run's settings (the
    console leaves them out: the run printed them when it began)."""
    found = splits(results)
    if not found:
        raise ValueError("results hold no split report (a dict from metrics.classification_report)")
    tuned_on = (results.get("thresholds") or {}).get("tuned_on")
    lines = _header(results, found[0][1], settings)
    for table in source_tables(results["sources"]) if results.get("sources") else []:
        lines += [f"{table.title}:", *("  " + ln for ln in text_table(Table("", table.header, table.rows, table.left)))]
    for name, rep in found:
        lines += _split_section(name, rep, tuned_on)
    return "\n".join(lines + [RULE]) + "\n"
