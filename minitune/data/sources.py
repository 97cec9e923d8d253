"""Extra training sources (`add_train`): other data sets' examples carried into the target task's label space by
label maps (label_maps.py), weighted, tagged with their source and counted for the report.

A source is one of:
- a built-in task's name (`semeval`): its training file, mapped by the map that ships from it into the target
  (data/maps/semeval-goemotions.toml); a target without one asks for a source file;
- a source file (`isear.toml`): a TOML table saying where the examples come from, with its label map:

      file = "isear.csv"       # CSV / TSV / JSONL, relative to this TOML file, read as the custom task reads
      text_col = "text"        #   (also label_col, pair_col, label_names, delimiter: the custom task's options)
      label_col = "emotion"
      empty = "drop"
      [map]
      joy = "joy"
      shame = "embarrassment"

  or `task = "semeval"` instead of `file`, to read a built-in task with a map of one's own;
- the same table inline in a run's TOML config (`[[data.add_train]]`), its `file` relative to the working folder.

The target's own examples stay in `task.train`; the sources' go to `task.added`, which every protocol adds to what
it trains on and never to what it evaluates on (experiments/holdout.py, experiments/cv.py; only a target without a
dev file has its merged data split 80/20, as the GoEmotions source system did). A source weight W makes the source
count W times its size: W < 1 keeps a seeded W share of its examples (one share for the whole run), W > 1 repeats
them (whole copies and a seeded share), so a large set cannot drown the target however the loss averages.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from minitune.data.custom import DELIMITERS_BY_NAME
from minitune.data.examples import Example, TaskData
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.data.label_maps import (
    MAP_KEYS,
    LabelMap,
    checked,
    map_examples,
    parse_map,
    read_map_file,
    shipped_between,
    taxonomy_map,
)
from minitune.data.tasks import label_array, label_counts
from minitune.errors import ConfigError, DataError

BUILTIN_SOURCES = ("humor", "semeval", "goemotions")
READ_KEYS = {"task", "file", "text_col", "label_col", "pair_col", "label_names", "delimiter", "name"}


def add_sources(task: TaskData, specs, weights, read_task, seed: int) -> None:
    """Read every source of `add_train` into the target task: its mapped examples in `task.added`, its counts in
    `task.added_counts`. `read_task(name, **files)` reads a task as the run reads its own (data/tasks.load_task with
    the run's data directory); `weights`: one per source, or None."""
    weights = [float(w) for w in weights or [1.0] * len(specs)]
    names: Counter = Counter()
    for n, (spec, weight) in enumerate(zip(specs, weights)):
        name, table, where, base = describe(spec, n)
        names[name] += 1
        if names[name] > 1:
            name = f"{name}#{names[name]}"
        source = read_source(table, where, base, read_task)
        lmap = source_map(table, where, source, task)
        tag = {"source": name}
        mapped = map_examples(source.train, source.kind, source.label_names, lmap, task.label_names, task.kind, tag)
        examples = weighted(mapped.examples, weight, seed + n)
        if mapped.examples and not examples:
            raise ConfigError(
                f"`source_weights` {weight:g} keeps none of the {len(mapped.examples)} examples of {where}: raise it"
            )
        task.added += examples
        task.added_counts.append(_counts(name, where, source, mapped, weight, examples, task))


def describe(spec, n: int) -> tuple[str, dict, str, Path]:
    """(the source's name, its table, where it was written for errors, the folder its `file` is relative to)."""
    if isinstance(spec, dict):
        where = f"`add_train` table {n + 1}"
        table = dict(spec)
        name = table.get("name") or table.get("task") or Path(str(table.get("file", f"source{n + 1}"))).stem
        return str(name), table, where, Path.cwd()
    spec = str(spec)
    if spec in BUILTIN_SOURCES:
        return spec, {"task": spec}, f"`add_train` {spec}", Path.cwd()
    path = Path(spec)
    if path.suffix.lower() != ".toml":
        raise ConfigError(
            f"`add_train` {spec}: give a built-in task ({', '.join(BUILTIN_SOURCES)}) or a source file ending in "
            ".toml that names the data file and its label map (README: several training sources)"
        )
    table = read_map_file(path)
    return str(table.get("name") or path.stem), table, str(path), path.parent


def read_source(table: dict, where: str, base: Path, read_task) -> TaskData:
    """The source's own examples, read as its task (or the custom task) reads them."""
    unknown = sorted(set(table) - READ_KEYS - MAP_KEYS)
    if unknown:
        keys = ", ".join(sorted(READ_KEYS | MAP_KEYS))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; a source's keys are {keys}")
    if ("task" in table) == ("file" in table):
        raise ConfigError(f'{where}: say where the examples come from with task = "semeval" or file = "data.csv"')
    _check_types(table, where)
    if "task" in table:
        if table["task"] not in BUILTIN_SOURCES:
            raise ConfigError(f"{where}: task = {table['task']!r}; choose one of {', '.join(BUILTIN_SOURCES)}")
        source = read_task(table["task"])
    else:
        options = {k: table[k] for k in ("text_col", "label_col", "pair_col", "label_names") if k in table}
        if "delimiter" in table:
            options["delimiter"] = DELIMITERS_BY_NAME[table["delimiter"]]
        try:
            source = read_task("custom", train_file=base / table["file"], **options)
        except DataError as e:  # a column the file lacks: the fix is this source's keys, not the run's flags
            message = str(e).replace("--text-col", "text_col").replace("--label-col", "label_col")
            raise DataError(f"{message} (set in {where})") from None
    if source.kind == MULTIPLE_CHOICE:
        raise ConfigError(f"{where}: a multiple-choice data set has no labels to map; add a classification set")
    return source


def _check_types(table: dict, where: str) -> None:
    """Each key of a source table holds what it names: a string, or label names as a list of strings."""
    for key in ("task", "file", "text_col", "label_col", "pair_col", "name"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{where}: {key} = {table[key]!r} should be a string (in quotes)")
    names = table.get("label_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ConfigError(f'{where}: label_names = {names!r} should be a list of label names, e.g. ["joy", "fear"]')
    if "delimiter" in table and table["delimiter"] not in DELIMITERS_BY_NAME:
        raise ConfigError(f"{where}: delimiter = {table['delimiter']!r}; choose one of {', '.join(DELIMITERS_BY_NAME)}")


def source_map(table: dict, where: str, source: TaskData, task: TaskData) -> LabelMap:
    """The source's label map, checked against both label spaces: its own [map], else the one that ships."""
    if "map" in table:
        lmap = parse_map(table, where)
    else:
        lmap = shipped_between(table.get("task", ""), task.name)
        if lmap is None:
            raise ConfigError(
                f"{where}: no label map ships from {table.get('task') or table.get('file')} to {task.name}; write "
                "a source file with a [map] table (README: several training sources)"
            )
    regroup = taxonomy_map(task.source["taxonomy"]) if task.source.get("taxonomy") else None
    return checked(lmap, source.label_names, task.label_names, task.kind, regroup)


def weighted(examples: list[Example], weight: float, seed: int) -> list[Example]:
    """round(weight x N) examples: whole copies of all of them, then a seeded share without repeats."""
    if not examples:
        return []
    whole, rest = divmod(int(round(weight * len(examples))), len(examples))
    pick = np.sort(np.random.default_rng(seed).permutation(len(examples))[:rest])
    return list(examples) * whole + [examples[i] for i in pick]


def _counts(name: str, where: str, source: TaskData, mapped, weight: float, examples: list[Example], task) -> dict:
    """What the report says of one source: its examples before and after mapping and weighting, what was dropped."""
    per_label = _label_counts(task, mapped.examples)
    return {
        "source": name,
        "map": where,
        "read": len(source.train),
        "mapped": len(mapped.examples),
        "weight": weight,
        "trained_on": len(examples),
        "dropped_empty": mapped.dropped_empty,
        "kept_negative": mapped.kept_negative,
        "dropped_ambiguous": mapped.dropped_ambiguous,
        "from_no_label": mapped.from_no_label,
        "unmapped_labels": dict(sorted(mapped.unmapped.items())),
        "label_counts": per_label,
    }


def _label_counts(task: TaskData, examples: list[Example]) -> dict[str, int]:
    if not examples:
        return dict.fromkeys(task.label_names, 0)
    return label_counts(task.kind, label_array(task, examples), task.label_names)


def fed_labels(task: TaskData) -> list[str]:
    """The target labels the extra sources give at least one positive example."""
    counts = Counter()
    for record in task.added_counts:
        counts.update({k: v for k, v in record["label_counts"].items() if v})
    return [name for name in task.label_names if counts[name]]


def trained_on_text(task: TaskData) -> str:
    """The training data in words, for the model card: the task, its taxonomy and its extra sources."""
    taxonomy = task.source.get("taxonomy")
    text = f"{task.name} ({taxonomy} taxonomy)" if taxonomy else task.name
    names = [r["source"] for r in task.added_counts]
    return f"{text} with {', '.join(names)} mapped into its labels" if names else text
