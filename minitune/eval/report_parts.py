"""What a report says, as data both renderings share: report.txt (eval/report.py) and report.html (eval/html.py).

A results dict (what a run writes to results.json) holds splits (any value that is a dict with "kind" and
"per_class": metrics.classification_report's output, maybe with "tuned", "by_group", "generation",
"threshold_notes"), a "train" table (the loop's summary, or a protocol's rows per fold or member) and "settings"
(the settings that shape the run). Every part below is words, numbers or a `Table`: no Python reprs reach a reader,
and a protocol's rows keep the columns a person compares (sizes, the start and best, the scores, the time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KIND_NAMES = {"single_label": "single-label", "multi_label": "multi-label", "multiple_choice": "multiple choice"}


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    left: int = 1  # how many leading columns are text (left-aligned); the others are numbers


def f4(x: float) -> str:
    return f"{x:.4f}"


def plain(v: Any) -> str:
    """A value as a person reads it: numbers to 4 significant digits, a mapping as `key value, ...`, a list joined."""
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: ""}[v]
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {plain(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return " ".join(plain(x) for x in v)
    return str(v)


def splits(results: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in results.items() if isinstance(v, dict) and "kind" in v and "per_class" in v]


def headline(rep: dict) -> str:
    """The split's main scores in one line (multi-label: at the fixed and the tuned thresholds)."""
    kind = rep["kind"]
    if kind == "multi_label":
        parts = [f"jaccard {f4(rep['jaccard'])}", f"micro-F1 {f4(rep['micro_f1'])}", f"macro-F1 {f4(rep['macro_f1'])}"]
        if "tuned" in rep:
            t = rep["tuned"]
            parts.append(
                f"| tuned: jaccard {f4(t['jaccard'])} micro-F1 {f4(t['micro_f1'])} macro-F1 {f4(t['macro_f1'])}"
            )
        return "  ".join(parts)
    parts = [f"accuracy {f4(rep['accuracy'])}", f"macro-F1 {f4(rep['macro_f1'])}"]
    if "binary_f1" in rep:
        parts.append(f"F1({rep['label_names'][1]}) {f4(rep['binary_f1'])}")
    if kind == "multiple_choice":
        parts.append(f"(chance {f4(1 / len(rep['label_names']))})")
    return "  ".join(parts)


def per_class_table(rep: dict) -> Table:
    rows = [
        [name, f4(c["precision"]), f4(c["recall"]), f4(c["f1"]), str(c["support"]), str(c["predicted"])]
        for name, c in rep["per_class"].items()
    ]
    total = str(sum(c["support"] for c in rep["per_class"].values()))
    rows.append(["macro avg", f4(rep["macro_precision"]), f4(rep["macro_recall"]), f4(rep["macro_f1"]), total, ""])
    rows.append(["micro avg", f4(rep["micro_precision"]), f4(rep["micro_recall"]), f4(rep["micro_f1"]), total, ""])
    rows.append(["weighted avg", "", "", f4(rep["weighted_f1"]), total, ""])
    thr = rep.get("threshold")
    title = "per class" + (f" (threshold {thr})" if isinstance(thr, float) else "")
    if isinstance(thr, list):
        title += " (per-label thresholds)"
    if rep["kind"] == "multiple_choice":
        title = "per option position (uneven 'predicted' counts mean a position bias)"
    return Table(title, ["label", "precision", "recall", "f1", "support", "predicted"], rows)


def threshold_tables(rep: dict) -> list[Table]:
    """Multi-label with tuned thresholds: the scores at the fixed and the tuned ones, and each label's threshold."""
    fixed, tuned = rep, rep["tuned"]
    fixed_name = f"fixed {fixed['threshold']}" if isinstance(fixed["threshold"], float) else "fixed"
    metrics = [("jaccard", "jaccard"), ("micro-F1", "micro_f1"), ("macro-F1", "macro_f1")]
    rows = [
        [m, f4(fixed[k]), f4(tuned[k]), f"{tuned[k] - fixed[k]:+.4f}"]
        for m, k in [*metrics, ("exact match", "subset_accuracy")]
    ]
    empty = fixed["empty_predictions"], tuned["empty_predictions"]
    rows.append(["no label predicted", str(empty[0]), str(empty[1]), f"{empty[1] - empty[0]:+d}"])
    thresholds = tuned["threshold"] if isinstance(tuned["threshold"], list) else None
    label_rows = []
    for i, name in enumerate(rep["per_class"]):
        f_fixed, f_tuned = fixed["per_class"][name]["f1"], tuned["per_class"][name]["f1"]
        thr = f4(thresholds[i]) if thresholds else str(tuned["threshold"])
        label_rows.append([name, thr, f4(f_fixed), f4(f_tuned), f"{f_tuned - f_fixed:+.4f}"])
    return [
        Table("thresholds: fixed vs tuned per label", ["metric", fixed_name, "tuned", "change"], rows),
        Table("", ["label", "threshold", "f1 fixed", "f1 tuned", "change"], label_rows),
    ]


def confusion_table(rep: dict) -> Table:
    names, matrix = rep["label_names"], rep["confusion_matrix"]
    # Columns are headed by class index to stay narrow; rows carry index and name.
    header = ["gold \\ predicted", *[str(j) for j in range(len(names))]]
    rows = [
        [str(i) if name == str(i) else f"{i} {name}", *[str(v) for v in row]]
        for i, (name, row) in enumerate(zip(names, matrix))
    ]
    return Table("confusion matrix (rows: gold, columns: predicted)", header, rows)


def groups_table(by_group: dict) -> Table:
    rows = [[name, str(g["n"]), str(g["correct"]), f4(g["accuracy"])] for name, g in by_group.items()]
    return Table(
        "accuracy by group (an example counts toward each of its groups)", ["group", "n", "correct", "accuracy"], rows
    )


def notes(name: str, rep: dict, tuned_on: str | None = None) -> list[str]:
    """What a person should know about a split, each said once. `tuned_on`: where the run tuned its thresholds
    (results.json's thresholds.tuned_on)."""
    said, per = [], rep["per_class"]
    never = [k for k, c in per.items() if c["predicted"] == 0 and c["support"] > 0]
    only_one = rep["kind"] == "single_label" and sum(c["predicted"] > 0 for c in per.values()) == 1
    if never and not only_one:  # a model that predicts one class only is said so below, once
        hint = " (try tuned thresholds, pos_weight or asl)" if rep["kind"] == "multi_label" else ""
        said.append(f"never predicted although present: {', '.join(never)}{hint}")
    weakest = sorted((c["f1"], k) for k, c in per.items() if c["support"] > 0)[:3]
    if len(per) > 3 and weakest and rep["kind"] != "multiple_choice":
        said.append("weakest labels by F1: " + ", ".join(f"{k} {f4(f)}" for f, k in weakest))
    if rep["kind"] == "single_label":
        said += _majority_notes(rep)
    if rep["kind"] == "multi_label" and rep["empty_predictions"]:
        said.append(f"{rep['empty_predictions']} of {rep['n_examples']} examples get no label at the fixed threshold")
    if "tuned" in rep and name == "dev" and tuned_on in (None, "dev") and not rep.get("threshold_notes"):
        said.append("tuned thresholds were fit on dev itself: the dev gain is optimistic; judge it on test")
    return said + list(rep.get("threshold_notes", []))


def _majority_notes(rep: dict) -> list[str]:
    per = rep["per_class"]
    top = max(per, key=lambda k: per[k]["support"])
    base = per[top]["support"] / max(rep["n_examples"], 1)
    predicted = [k for k, c in per.items() if c["predicted"] > 0]
    baseline = f"majority-class baseline (always '{top}'): accuracy {f4(base)}"
    if rep["accuracy"] > base + 0.01 and len(predicted) > 1:
        return [baseline]
    what = f"predicts only '{predicted[0]}'" if len(predicted) == 1 else "does not beat it"
    return [
        f"{baseline}; the model {what}: it has not learned the task yet. Try more steps (--epochs, --max-steps, "
        "or more --max-train-samples), a larger learning rate (e.g. --lr 5e-5), --class-weights balanced for "
        "imbalanced labels, or a model whose pooling suits the task"
    ]


def start_lines(t: dict) -> list[str]:
    """ "before training: X, best: Y at epoch k", and plain words when training did not beat its start."""
    metric, start, best = t.get("metric", "score"), (t.get("start") or {}), t.get("best")
    before = start.get(metric)
    where = f" at step {t['best_step']}" if t.get("best_step") is not None else ""
    where = f" at epoch {t['best_epoch']} (step {t.get('best_step', '?')})" if t.get("best_epoch") else where
    if before is None:
        return [f"best {metric}: {f4(best)}{where}"] if best is not None else []
    label = " (chance level: a fresh, untrained head)" if t.get("start_is_chance") else ""
    if best is None:
        return [f"before training: {metric} {f4(before)}{label} (nothing trained: this is the run's score)"]
    lines = [f"before training: {metric} {f4(before)}{label}, best: {f4(best)}{where}"]
    if best < before:
        lines.append(
            f"training made it worse: the best {metric} after training ({f4(best)}) is below the score before "
            f"training ({f4(before)}); the untrained model is the better one here"
        )
    return lines


def training_lines(t: dict) -> list[str]:
    """What the loop did, in words: steps, time, the start and the best, an early stop, the losses."""
    if "step" not in t:  # a protocol's table: what it trained is in its rows
        return start_lines(t)
    total = t.get("total_steps") or t["step"]
    lines = [
        f"training: {t['step']} of {total} optimizer steps, {t.get('epoch', 0)} epoch(s) completed"
        + (f", {t['seconds']} s" if "seconds" in t else "")
    ]
    lines += start_lines(t)
    if t.get("pruned"):
        lines.append(f"pruned at step {t['step']} of {total} by the search: {t['pruned']}")
    elif t.get("stopped_early"):
        lines.append(
            f"stopped early at step {t['step']} of {total}: no improvement in {t.get('patience')} "
            "evaluations (patience counts evaluations, not epochs)"
        )
    losses = t.get("losses") or {}
    if losses.get("train") is not None or losses.get("dev") is not None:
        lines.append("loss at the best step: " + ", ".join(f"{k} {f4(v)}" for k, v in losses.items() if v is not None))
    if t.get("skipped_steps"):
        lines.append(f"skipped steps (non-finite loss or gradient): {t['skipped_steps']}")
    return lines


# A protocol's rows (one per fold or member) keep the columns a person compares; the loop's bookkeeping stays in
# results.json.
ROW_KEYS = ("fold", "seed", "n_train", "n_val", "n_held_out", "best_epoch", "best_step", "best", "seconds")
ROW_PREFIXES = ("start_", "test_", "dev_", "oof_", "accuracy", "macro_f1", "micro_f1", "jaccard", "binary_f1")


def train_tables(t: dict) -> list[Table]:
    """A protocol's rows (folds, members) and their mean ± std, as tables of the columns that matter."""
    tables = []
    for key, rows in t.items():
        if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
            continue
        found = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "start_is_chance"]  # said above
        keys = [k for k in ROW_KEYS if k in found] + [k for k in found if k.startswith(ROW_PREFIXES)]
        table_rows = [[_cell(k, r.get(k)) for k in keys] for r in rows]
        tables.append(Table(key.replace("_", " "), keys, table_rows))
    return tables


def _cell(key: str, v: Any) -> str:
    """A table cell: scores and losses to 4 decimals, so a column lines up; seconds to one."""
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.1f}" if "seconds" in key else f"{v:.4f}"
    return plain(v)


def train_scalars(t: dict) -> list[str]:
    """A protocol's own numbers (k, its seconds...), `key value`, leaving out its tables and what lines say."""
    said = {"start", "best", "metric", "start_is_chance", "best_step", "best_epoch"}
    return [
        f"{k}={plain(v)}" for k, v in t.items() if k not in said and not isinstance(v, (list, dict)) and v is not None
    ]


def settings_rows(settings: dict) -> list[list[str]]:
    """The settings that shape the run (results.json's `settings`: the main ones and every one changed), as rows."""
    return [[k, plain(v)] for k, v in settings.items()]
