"""The printed end-of-run report and the results.json writer.

`format_report(results)` renders a results dict as plain text a person can act on. Expected shape (every
key optional except at least one split):
    {"task": "semeval", "model": "minilm",
     "config": {flat key: value, ...},            # printed on one line
     "train": {flat key: value, ...},             # e.g. epochs, best_epoch, seconds
     "dev": classification_report(...),           # one entry per split, any name; dev and test usual
     "test": classification_report(...)}
A split is any value that is a dict with "kind" and "per_class" (what metrics.classification_report
returns). Multi-label splits may carry "tuned" (the same report at tuned thresholds) and any split may carry
"by_group" (metrics.accuracy_by_group); both are rendered when present.

`write_results(path, results)` writes JSON atomically: a temporary file in the destination directory, fsync,
then os.replace, so a crash or a full disk never leaves a truncated results.json behind. numpy values become
Python numbers or lists; NaN and infinities (a diverged loss) become null, since JSON has no such values.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from minitune.errors import ConfigError
from minitune.eval.generations import format_generation_notes

KIND_NAMES = {"single_label": "single-label", "multi_label": "multi-label", "multiple_choice": "multiple choice"}
RULE = "=" * 72


def _f(x: float) -> str:
    return f"{x:.4f}"


def _splits(results: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in results.items() if isinstance(v, dict) and "kind" in v and "per_class" in v]


def _wrapped(title: str, items: list[str], width: int = 100) -> list[str]:
    """`title: a=1  b=2 ...` continued on indented lines so no line runs past `width`."""
    lines, line = [], f"{title}:"
    for item in items:
        if len(line) + 2 + len(item) > width and line.strip() != f"{title}:":
            lines.append(line)
            line = " " * (len(title) + 1)
        line += "  " + item
    return lines + [line]


def _mapping(title: str, d: dict) -> list[str]:
    """Scalars as wrapped key=value; a list of flat dicts (e.g. one per fold) as a table under its key."""
    scalars = [f"{k}={_short(v)}" for k, v in d.items() if not _is_records(v)]
    lines = _wrapped(title, scalars) if scalars else [f"{title}:"]
    for k, v in d.items():
        if _is_records(v):
            keys = list(dict.fromkeys(key for rec in v for key in rec))
            rows = [[_short(rec.get(key, "")) for key in keys] for rec in v]
            lines += [f"  {k}:", *("    " + ln for ln in _table(keys, rows, left=0))]
    return lines


def _is_records(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Right-aligned columns, except the first `left` which are left-aligned; two spaces between."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def _header(results: dict, splits: list[tuple[str, dict]], settings: bool = True) -> list[str]:
    first = splits[0][1]
    kind = KIND_NAMES.get(first["kind"], first["kind"])
    lines = [
        RULE,
        f"task: {results.get('task', '?')}  ({kind}, {len(first['label_names'])} labels)",
        f"model: {results.get('model', '?')}",
    ]
    if settings and isinstance(results.get("settings"), dict) and results["settings"]:
        lines += _mapping("settings", results["settings"])  # what the run uses; config.json holds them all
    train = results.get("train")
    if isinstance(train, dict) and train:
        lines += _training(train) if "step" in train else _mapping("train", train) + start_lines(train)
    return lines


def _training(t: dict) -> list[str]:
    """What the loop did, in words: steps, time, the best evaluation, an early stop, the losses."""
    total = t.get("total_steps") or t["step"]
    lines = [
        f"training: {t['step']} of {total} optimizer steps, {t.get('epoch', 0)} epoch(s) completed"
        + (f", {t['seconds']} s" if "seconds" in t else "")
    ]
    lines += start_lines(t)
    if t.get("stopped_early"):
        lines.append(
            f"stopped early at step {t['step']} of {total}: no improvement in {t.get('patience')} "
            "evaluations (patience counts evaluations, not epochs)"
        )
    losses = t.get("losses") or {}
    if losses.get("train") is not None or losses.get("dev") is not None:
        parts = [f"{k} {_f(v)}" for k, v in losses.items() if v is not None]
        lines.append("loss at the best step: " + ", ".join(parts))
    if t.get("skipped_steps"):
        lines.append(f"skipped steps (non-finite loss or gradient): {t['skipped_steps']}")
    return lines


def start_lines(t: dict) -> list[str]:
    """ "before training: X, best: Y at epoch k", and plain words when training did not beat its start."""
    metric, start, best = t.get("metric", "score"), (t.get("start") or {}), t.get("best")
    before = start.get(metric)
    where = f" at step {t['best_step']}" if t.get("best_step") is not None else ""
    where = f" at epoch {t['best_epoch']} (step {t.get('best_step', '?')})" if t.get("best_epoch") else where
    if before is None:
        return [f"best {metric}: {_f(best)}{where}"] if best is not None else []
    label = " (chance level: a fresh, untrained head)" if t.get("start_is_chance") else ""
    if best is None:
        return [f"before training: {metric} {_f(before)}{label} (nothing trained: this is the run's score)"]
    lines = [f"before training: {metric} {_f(before)}{label}, best: {_f(best)}{where}"]
    if best < before:
        lines.append(
            f"training made it worse: the best {metric} after training ({_f(best)}) is below the score before "
            f"training ({_f(before)}); the untrained model is the better one here"
        )
    return lines


def _headline(rep: dict) -> str:
    kind = rep["kind"]
    if kind == "multi_label":
        parts = [f"jaccard {_f(rep['jaccard'])}", f"micro-F1 {_f(rep['micro_f1'])}", f"macro-F1 {_f(rep['macro_f1'])}"]
        if "tuned" in rep:
            t = rep["tuned"]
            parts.append(
                f"| tuned: jaccard {_f(t['jaccard'])} micro-F1 {_f(t['micro_f1'])} macro-F1 {_f(t['macro_f1'])}"
            )
    else:
        parts = [f"accuracy {_f(rep['accuracy'])}", f"macro-F1 {_f(rep['macro_f1'])}"]
        if "binary_f1" in rep:
            parts.append(f"F1({rep['label_names'][1]}) {_f(rep['binary_f1'])}")
        if kind == "multiple_choice":
            parts.append(f"(chance {_f(1 / len(rep['label_names']))})")
    return "headline: " + "  ".join(parts)


def _per_class(rep: dict) -> list[str]:
    rows = [
        [name, _f(c["precision"]), _f(c["recall"]), _f(c["f1"]), str(c["support"]), str(c["predicted"])]
        for name, c in rep["per_class"].items()
    ]
    total = str(sum(c["support"] for c in rep["per_class"].values()))
    rows.append(["macro avg", _f(rep["macro_precision"]), _f(rep["macro_recall"]), _f(rep["macro_f1"]), total, ""])
    rows.append(["micro avg", _f(rep["micro_precision"]), _f(rep["micro_recall"]), _f(rep["micro_f1"]), total, ""])
    rows.append(["weighted avg", "", "", _f(rep["weighted_f1"]), total, ""])
    thr = rep.get("threshold")
    title = "per class" + (f" (threshold {thr})" if isinstance(thr, float) else "")
    if isinstance(thr, list):
        title += " (per-label thresholds)"
    if rep["kind"] == "multiple_choice":
        title = "per option position (uneven 'predicted' counts mean a position bias)"
    return [title, *_table(["label", "precision", "recall", "f1", "support", "predicted"], rows)]


def _threshold_comparison(rep: dict) -> list[str]:
    fixed, tuned = rep, rep["tuned"]
    fixed_name = f"fixed {fixed['threshold']}" if isinstance(fixed["threshold"], float) else "fixed"
    rows = [
        [m, _f(fixed[key]), _f(tuned[key]), f"{tuned[key] - fixed[key]:+.4f}"]
        for m, key in [
            ("jaccard", "jaccard"),
            ("micro-F1", "micro_f1"),
            ("macro-F1", "macro_f1"),
            ("exact match", "subset_accuracy"),
        ]
    ]
    rows.append(
        [
            "no label predicted",
            str(fixed["empty_predictions"]),
            str(tuned["empty_predictions"]),
            f"{tuned['empty_predictions'] - fixed['empty_predictions']:+d}",
        ]
    )
    lines = ["thresholds: fixed vs tuned per label", *_table(["metric", fixed_name, "tuned", "change"], rows)]
    thresholds = tuned["threshold"] if isinstance(tuned["threshold"], list) else None
    label_rows = []
    for i, name in enumerate(rep["per_class"]):
        f_fixed, f_tuned = fixed["per_class"][name]["f1"], tuned["per_class"][name]["f1"]
        thr = _f(thresholds[i]) if thresholds else str(tuned["threshold"])
        label_rows.append([name, thr, _f(f_fixed), _f(f_tuned), f"{f_tuned - f_fixed:+.4f}"])
    lines += ["", *_table(["label", "threshold", "f1 fixed", "f1 tuned", "change"], label_rows)]
    return lines


def _confusion(rep: dict) -> list[str]:
    names, matrix = rep["label_names"], rep["confusion_matrix"]
    # Columns are headed by class index to stay narrow; rows carry index and name.
    header = ["gold \\ predicted", *[str(j) for j in range(len(names))]]
    rows = [
        [str(i) if name == str(i) else f"{i} {name}", *[str(v) for v in row]]
        for i, (name, row) in enumerate(zip(names, matrix))
    ]
    return ["confusion matrix (rows: gold, columns: predicted)", *_table(header, rows)]


def _groups(by_group: dict) -> list[str]:
    rows = [[name, str(g["n"]), str(g["correct"]), _f(g["accuracy"])] for name, g in by_group.items()]
    note = "(an example counts toward each of its groups)"
    return [f"accuracy by group {note}", *_table(["group", "n", "correct", "accuracy"], rows)]


def _notes(name: str, rep: dict) -> list[str]:
    notes, per = [], rep["per_class"]
    never = [k for k, c in per.items() if c["predicted"] == 0 and c["support"] > 0]
    if never:
        hint = " (try tuned thresholds, pos_weight or asl)" if rep["kind"] == "multi_label" else ""
        notes.append(f"never predicted although present: {', '.join(never)}{hint}")
    weakest = sorted((c["f1"], k) for k, c in per.items() if c["support"] > 0)[:3]
    if len(per) > 3 and weakest and rep["kind"] != "multiple_choice":
        notes.append("weakest labels by F1: " + ", ".join(f"{k} {_f(f)}" for f, k in weakest))
    predicted = [k for k, c in per.items() if c["predicted"] > 0]
    if rep["kind"] == "single_label":
        top = max(per, key=lambda k: per[k]["support"])
        base = per[top]["support"] / max(rep["n_examples"], 1)
        verdict = "" if rep["accuracy"] > base + 0.01 else " — the model does not beat it"
        notes.append(f"majority-class baseline (always '{top}'): accuracy {_f(base)}{verdict}")
        if len(predicted) == 1 or verdict:
            what = f"predicts only '{predicted[0]}'" if len(predicted) == 1 else "does not beat the majority class"
            notes.append(
                f"the model {what}: it has not learned the task yet. Try more steps (--epochs, "
                "--max-steps, or more --max-train-samples), a larger learning rate (e.g. --lr 5e-5), "
                "--class-weights balanced for imbalanced labels, or a model whose pooling suits the task"
            )
    if rep["kind"] == "multi_label" and rep["empty_predictions"]:
        notes.append(f"{rep['empty_predictions']} of {rep['n_examples']} examples get no label at the fixed threshold")
    if "tuned" in rep and name == "dev":
        notes.append("tuned thresholds were fit on dev itself: the dev gain is optimistic; judge it on test")
    for note in rep.get("threshold_notes", []):
        notes.append(note)
    return ["notes:", *[f"- {n}" for n in notes]] if notes else []


def _split_section(name: str, rep: dict) -> list[str]:
    lines = [RULE, f"{name} ({rep['n_examples']} examples)", _headline(rep), "", *_per_class(rep)]
    if "tuned" in rep:
        lines += ["", *_threshold_comparison(rep)]
    if "confusion_matrix" in rep:
        lines += ["", *_confusion(rep)]
    if "by_group" in rep:
        lines += ["", *_groups(rep["by_group"])]
    if "generation" in rep:  # --head generative: answers that name no label
        lines += ["", *format_generation_notes(rep["generation"])]
    notes = _notes(name, rep)
    return lines + ([""] + notes if notes else [])


def format_report(results: dict, settings: bool = True) -> str:
    """Plain-text report of a results dict (shape in the module docstring), ending with a newline."""
    splits = _splits(results)
    if not splits:
        raise ValueError("results hold no split report (a dict from metrics.classification_report)")
    lines = _header(results, splits, settings)
    for name, rep in splits:
        lines += _split_section(name, rep)
    return "\n".join(lines + [RULE]) + "\n"


def _plain(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, tuples to lists, paths to str, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(path: str | os.PathLike, results: dict) -> None:
    """Write `results` as indented JSON to `path` atomically (temp file in the same directory + os.replace)."""
    path = Path(path)
    text = json.dumps(_plain(results), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write results ({exc.strerror}); choose a writable `output_dir`") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; results are meant to be shared
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write results ({exc.strerror}); choose a writable `output_dir`") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
