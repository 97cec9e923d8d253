"""What a run trained on several data sets reports of them (data/sources.py merged them): each source's examples
before and after its label map and weight, what the maps dropped, the per-label counts after the merge and after
oversampling, and the scores on the labels the extra sources feed, beside the scores on every label. Where the dev
split mixes sources (no dev file: the merged data was split), each source's own dev score too.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from minitune.data.examples import Example, TaskData
from minitune.data.features import oversample_rare
from minitune.data.kinds import MULTI_LABEL
from minitune.data.sources import fed_labels
from minitune.data.tasks import label_array, label_counts
from minitune.eval.report_parts import Table, plain
from minitune.eval.scoring import task_report

TARGET = "(target)"  # the target task's own examples, in a source's column


def sources_results(task: TaskData, reports: dict[str, dict], trained_on: list[Example], oversample: int, seed: int):
    """results.json's `sources`: the merge counted, and every split's macro-F1 on the labels the sources feed."""
    labels = label_array(task, trained_on)
    counts = {"merged": label_counts(task.kind, labels, task.label_names), "by_source": {}}
    for name in dict.fromkeys(ex.meta.get("source", TARGET) for ex in trained_on):
        rows = [i for i, ex in enumerate(trained_on) if ex.meta.get("source", TARGET) == name]
        shown = _target_name(task) if name == TARGET else name
        counts["by_source"][shown] = label_counts(task.kind, labels[rows], task.label_names)
    if oversample and task.kind == MULTI_LABEL:  # the rows finetune.training_features trains on, drawn again
        rows = oversample_rare(labels, oversample, seed)
        counts["oversampled"] = label_counts(task.kind, labels[rows], task.label_names)
    fed = fed_labels(task)
    # What each source trained on, counted in what the model trained on: without a dev file part of every source
    # went to the dev split.
    trained = Counter(ex.meta.get("source", TARGET) for ex in trained_on)
    own = {"source": TARGET, "name": _target_name(task), "read": len(task.train), "trained_on": trained[TARGET]}
    added = [r | {"trained_on": trained[r["source"]]} for r in task.added_counts]
    return {
        "sources": [own, *added],
        "fed_labels": fed,
        "label_counts": counts,
        "fed_scores": {name: fed_scores(rep, fed) for name, rep in reports.items()},
    }


def _target_name(task: TaskData) -> str:
    taxonomy = task.source.get("taxonomy")
    return f"{task.name} ({taxonomy})" if taxonomy else task.name


def fed_scores(report: dict, fed: list[str]) -> dict:
    """Macro-F1 over the fed labels and over the others, at the fixed threshold and (multi-label) the tuned ones."""
    out = {}
    for at, rep in (("fixed", report), ("tuned", report.get("tuned"))):
        if rep is None:
            continue
        f1 = {name: c["f1"] for name, c in rep["per_class"].items()}
        others = [name for name in f1 if name not in fed]
        out[at] = {
            "fed_macro_f1": float(np.mean([f1[n] for n in fed])) if fed else None,
            "other_macro_f1": float(np.mean([f1[n] for n in others])) if others else None,
            "macro_f1": rep["macro_f1"],
        }
    return out


def by_source(task: TaskData, examples: list[Example], scores: np.ndarray, threshold: float, tuned=None) -> dict:
    """Each source's own report on a split that mixes them (none when the split holds one source)."""
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.meta.get("source", TARGET), []).append(i)
    if len(groups) < 2:
        return {}
    out = {}
    for name, rows in groups.items():
        rep = task_report(task, [examples[i] for i in rows], scores[rows], threshold, tuned)
        out[name] = {"n": len(rows), "macro_f1": rep["macro_f1"]}
        if "tuned" in rep:
            out[name]["tuned_macro_f1"] = rep["tuned"]["macro_f1"]
    return out


def source_tables(sources: dict) -> list[Table]:
    """The report's tables: the sources, and the scores on the fed labels."""
    keys = [
        "read",
        "mapped",
        "weight",
        "trained_on",
        "dropped_empty",
        "kept_negative",
        "dropped_ambiguous",
        "from_no_label",
    ]
    rows = [
        [r.get("name", r["source"]), *(plain(r.get(k, "")) for k in keys), plain(r.get("unmapped_labels") or "")]
        for r in sources["sources"]
    ]
    tables = [Table("training sources", ["source", *keys, "unmapped labels (dropped)"], rows)]
    counts = sources["label_counts"]
    columns = {**counts["by_source"], "merged": counts["merged"], **({"oversampled": counts["oversampled"]}
               if "oversampled" in counts else {})}  # fmt: skip
    label_rows = [[name, *(str(c[name]) for c in columns.values())] for name in counts["merged"]]
    tables.append(Table("training examples per label, by source", ["label", *columns], label_rows))
    fed = ", ".join(sources["fed_labels"]) or "none"
    score_rows = [
        [split, at, *(plain(v.get(k)) for k in ("fed_macro_f1", "other_macro_f1", "macro_f1"))]
        for split, ats in sources["fed_scores"].items()
        for at, v in ats.items()
    ]
    header = ["split", "threshold", "macro-F1 fed labels", "macro-F1 other labels", "macro-F1 all"]
    tables.append(Table(f"scores on the labels the extra sources feed ({fed})", header, score_rows, left=2))
    if sources.get("dev_by_source"):
        head = ["source", "n", "macro_f1", "tuned_macro_f1"]
        body = [[name, *(plain(v.get(k, "")) for k in head[1:])] for name, v in sources["dev_by_source"].items()]
        tables.append(Table("dev split by source (no dev file: the merged data was split)", head, body))
    return tables
