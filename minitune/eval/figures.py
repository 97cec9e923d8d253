"""The figures of a run, drawn with matplotlib from what the run wrote: results.json, metrics.jsonl (fold*/ for
Recipe-MPR) and predictions_<split>.jsonl. Nothing needs the model, so `minitune report RUN_DIR` redraws them.

Every `draw_*` function takes plain data and returns a matplotlib Figure; the numbers it plots are the ones passed
in (the tests read them back from the figure's artists and compare with results.json). Figures are built with
`matplotlib.figure.Figure`, never pyplot: no global figure registry, no display, no interactive backend; saving
renders through Agg (PNG) and the SVG backend.

Which figures a run gets (`draw_run`), for its main split (dev; the pooled fold test parts for Recipe-MPR):
training curves; confusion matrix, counts and row-normalised (single-label and multiple choice); per-class
precision/recall/F1 with support (every task); label frequency in train (multi-label, and single-label when the
largest class has IMBALANCE x the smallest's examples); F1 against threshold per label with the chosen thresholds
(multi-label); a reliability diagram; accuracy by query type (multiple choice). Long label lists are drawn as
horizontal bars sorted by value, one row per label, the figure growing with the list so no text overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from minitune.checkpoints.atomic import atomic_write
from minitune.checkpoints.rundir import read_jsonl
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.eval.predictions import read_prediction_records

IMBALANCE = 1.5  # single-label: draw the label frequencies when the largest class is this many times the smallest
STACK_ABOVE = 12  # confusion matrices with more classes are drawn one above the other
ROW_INCHES = 0.32  # height of one label's row in the bar charts
CURVE_KEYS = (("loss", "training loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)"))
COLORS = {"precision": "#4C72B0", "recall": "#DD8452", "f1": "#55A868"}


@dataclass
class RunFigure:
    name: str  # file stem under figures/
    title: str  # caption in report.html
    figure: Figure
    svg: bool = False  # also as SVG: the text-heavy charts, which a reader may zoom or copy labels from


def new_figure(**kw) -> Figure:
    """A matplotlib Figure. Imported here, not at the top: matplotlib adds about 0.8 s to every start of the
    command line, and only a run's end and `minitune report` draw (predict, export and a flag error do not)."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def bar_height(n: int) -> float:
    return max(2.5, 1.2 + ROW_INCHES * n)


def draw_training_curves(runs: dict[str, list[dict]], metric: str) -> Figure:
    """Loss, learning rate, gradient norm and the dev metrics over optimizer steps; one line per run (fold)."""
    fig = new_figure(figsize=(11, 6.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax in axes:
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax, (key, title) in zip(axes, CURVE_KEYS):
        for run, records in runs.items():
            pts = [(r["step"], r[key]) for r in records if r.get("type") == "train" and r.get(key) is not None]
            if pts:
                name = f"{run} train".strip() if key == "loss" else run or None
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=name)
        ax.set(title=title, xlabel="optimizer step")
    for run, records in runs.items():  # the dev loss beside the training loss: the gap is overfitting
        pts = [(r["step"], r["loss"]) for r in records if r.get("type") == "eval" and r.get("loss") is not None]
        if pts:
            axes[0].plot(*zip(*pts), "--", marker="o", label=f"{run} dev loss".strip())
    if any(r.get("type") == "eval" and r.get("loss") is not None for rs in runs.values() for r in rs):
        axes[0].set_title("training and dev loss")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax = axes[3]
    for run, records in runs.items():
        evals = [r for r in records if r.get("type") == "eval"]
        skip = ("type", "step", "epoch", "improved", "loss", "before_training")  # the dev loss: beside the train loss
        keys = [k for k in dict.fromkeys(k for r in evals for k in r) if k not in skip]
        if "accuracy" in keys and all(r.get("micro_f1") == r["accuracy"] for r in evals):
            keys.remove("micro_f1")  # single-label micro-F1 is accuracy: one line would hide the other
        for key in keys:
            pts = [(r["step"], r[key]) for r in evals if isinstance(r.get(key), (int, float))]
            style = "-" if key == metric else ":"
            ax.plot(*zip(*pts), style, marker="o", label=f"{run} {key}".strip() if len(runs) > 1 else key)
    title = f"dev metrics at each evaluation\n(selection: {metric}; step 0: before training)"  # 2 lines: no cut
    ax.set(title=title, xlabel="optimizer step", ylim=(0, 1))
    for a in axes:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
        a.grid(alpha=0.3)
    return fig


def robust_keys(runs: dict[str, list[dict]]) -> list[str]:
    """The train records' adaptive loss weights (loss_weight_<term>) and perturbed loss (adv_loss), if logged."""
    keys = dict.fromkeys(k for rs in runs.values() for r in rs if r.get("type") == "train" for k in r)
    return [k for k in keys if k.startswith("loss_weight_") or k == "adv_loss"]


def draw_loss_weights(runs: dict[str, list[dict]], keys: list[str]) -> Figure:
    """The weights a summed loss's terms had at each logged step (train/loss_weighting.py), and the adversarial
    loss beside the clean one (train/adversarial.py): the gap is how much the perturbation costs the model."""
    weights = [k for k in keys if k != "adv_loss"]
    panels = [("effective weight of each loss term", weights)] if weights else []
    panels += [("training loss, clean and perturbed", ["loss", "adv_loss"])] if "adv_loss" in keys else []
    names = {"loss": "clean (trained)", "adv_loss": "perturbed"}
    fig = new_figure(figsize=(5.5 * len(panels), 3.8), layout="constrained")
    for ax, (title, shown) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for run, records in runs.items():
            for key in shown:
                pts = [(r["step"], r[key]) for r in records if r.get("type") == "train" and r.get(key) is not None]
                label = names.get(key, key.removeprefix("loss_weight_"))
                if pts:
                    ax.plot(*zip(*pts), label=f"{run} {label}".strip())
        ax.set(title=title, xlabel="optimizer step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def draw_confusion(matrix: list[list[int]], names: list[str], split: str) -> Figure:
    """Counts and row-normalised (each gold row sums to 1); rows gold, columns predicted. Side by side up to
    STACK_ABOVE classes, one above the other beyond, so a many-class matrix keeps cells wide enough for its labels."""
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    n = len(names)
    side = max(4.0, (0.55 if n <= STACK_ABOVE else 0.3) * n + 2.5)
    stacked = n > STACK_ABOVE
    fig = new_figure(figsize=(side + 1, 2 * side) if stacked else (2 * side + 1, side), layout="constrained")
    for ax, values, title, fmt in zip(
        fig.subplots(2, 1) if stacked else fig.subplots(1, 2),
        (counts, normalised),
        ("counts", "row-normalised"),
        ("d", ".2f"),
    ):
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=None if fmt == "d" else 1)
        # Upright up to 3 classes, slanted up to STACK_ABOVE, vertical beyond (slanted labels' boxes would overlap).
        rotation = 0 if n <= 3 else 45 if n <= STACK_ABOVE else 90
        ax.set_xticks(range(n), names, rotation=rotation, ha="right" if rotation == 45 else "center")
        ax.set_yticks(range(n), names)
        ax.set(xlabel="predicted", ylabel="gold")
        ax.set_title(title)
        if n <= 15:  # above that the numbers no longer fit their cells: the colour carries them
            high = (1.0 if fmt != "d" else max(values.max(initial=0), 1)) / 2  # the middle of the colour scale
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, format(v, fmt), ha="center", va="center", color="white" if v > high else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{split}: confusion matrix (row-normalised: each gold row sums to 1, the diagonal is recall)")
    return fig


def draw_per_class(per_class: dict[str, dict], split: str, sort: bool = True) -> Figure:
    """Horizontal precision / recall / F1 bars per class, sorted by F1 (best on top), support in the labels."""
    names = list(per_class)
    if sort:
        names.sort(key=lambda k: (per_class[k]["f1"], per_class[k]["support"]))
    fig = new_figure(figsize=(9, bar_height(len(names)) + 0.6), layout="constrained")
    ax = fig.subplots()
    y, h = np.arange(len(names)), 0.27
    for offset, key in zip((h, 0, -h), ("precision", "recall", "f1")):
        ax.barh(y + offset, [per_class[k][key] for k in names], height=h, label=key, color=COLORS[key])
    ax.set_yticks(y, [f"{k}  (n={per_class[k]['support']})" for k in names])
    ax.set(xlim=(0, 1.0), xlabel="score", title=f"{split}: per-class precision, recall, F1 (n = gold support)")
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def draw_label_frequency(counts: dict[str, int]) -> Figure:
    """Training examples per label, most frequent on top, each bar labelled with its count and share."""
    names = sorted(counts, key=lambda k: counts[k])
    total = sum(counts.values()) or 1
    fig = new_figure(figsize=(9, bar_height(len(names))), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(range(len(names)), [counts[k] for k in names], color="#8172B3")
    ax.bar_label(bars, [f"{counts[k]} ({100 * counts[k] / total:.1f}%)" for k in names], padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="training examples (in parentheses: share of all training labels)", title="label frequency in train")
    ax.set_xlim(0, max(counts.values(), default=1) * 1.25)
    ax.set_ylim(-0.6, len(names) - 0.4)
    return fig


def draw_source_counts(sources: dict) -> Figure:
    """Positive training examples per label, stacked by the source they came from (the target's own first), with
    each label's count after oversampling marked where the run oversampled."""
    merged, parts = sources["label_counts"]["merged"], sources["label_counts"]["by_source"]
    names = sorted(merged, key=lambda k: merged[k])
    fig = new_figure(figsize=(9, bar_height(len(names))), layout="constrained")
    ax = fig.subplots()
    start = np.zeros(len(names))
    for source, counts in parts.items():
        width = np.array([counts.get(k, 0) for k in names], dtype=float)
        ax.barh(range(len(names)), width, left=start, label=source)
        start += width
    after = sources["label_counts"].get("oversampled")
    if after:
        ax.scatter([after[k] for k in names], range(len(names)), marker="|", s=120, color="black", label="oversampled")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="positive training examples per label", title="training labels by source")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    return fig


def threshold_curves(gold: np.ndarray, probs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F1 of each label at each threshold: (G, L), predicting a label when its probability >= threshold."""
    y = gold.astype(bool)
    pred = probs[None, :, :] >= grid[:, None, None]  # (G, N, L)
    tp = (pred & y[None]).sum(axis=1)
    denom = pred.sum(axis=1) + y.sum(axis=0)[None, :]
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)


def draw_thresholds(
    names: list[str], gold: np.ndarray, probs: np.ndarray, chosen: dict[str, float], fixed: float, split: str
) -> Figure:
    """One small panel per label (most frequent first): F1 against threshold, the chosen threshold marked (red)
    beside the fixed one (grey, dashed)."""
    grid = np.round(np.arange(1, 100) * 0.01, 2)
    f1 = threshold_curves(gold, probs, grid)
    order = sorted(range(len(names)), key=lambda i: -gold[:, i].sum())
    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig = new_figure(figsize=(3.4 * cols, 2.3 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols, sharex=True, sharey=True)).ravel()
    for ax, i in zip(axes, order):
        ax.plot(grid, f1[:, i], color=COLORS["f1"])
        ax.axvline(fixed, color="grey", ls="--", lw=1)
        if names[i] in chosen:
            ax.axvline(chosen[names[i]], color="#C44E52", lw=1.5)
        ax.set_title(f"{names[i]} (n={int(gold[:, i].sum())})", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.supxlabel("threshold")
    fig.supylabel("F1")
    fig.suptitle(f"{split}: F1 against threshold per label (red: tuned threshold, dashed: fixed {fixed})")
    return fig


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict:
    """Equal-width confidence bins: per bin its count, mean confidence and accuracy; and the expected calibration
    error (the count-weighted mean gap)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    conf = np.bincount(which, confidence, minlength=bins) / np.maximum(n, 1)
    acc = np.bincount(which, correct.astype(float), minlength=bins) / np.maximum(n, 1)
    ece = float((n * np.abs(acc - conf)).sum() / max(n.sum(), 1))
    return {"edges": edges, "count": n, "confidence": conf, "accuracy": acc, "ece": ece}


def draw_reliability(kind: str, gold: np.ndarray, probs: np.ndarray, split: str) -> Figure:
    """Reliability diagram: the top class's probability against how often it is right (multi-label: every
    label's probability against whether the label is gold), with the number of examples per bin below."""
    if kind == MULTI_LABEL:
        confidence, correct, what = probs.ravel(), gold.ravel().astype(bool), "label probability"
    else:
        confidence, correct, what = probs.max(axis=1), probs.argmax(axis=1) == gold, "top-class probability"
    b = reliability_bins(confidence, correct)
    fig = new_figure(figsize=(6, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    centers, width = (b["edges"][:-1] + b["edges"][1:]) / 2, b["edges"][1] - b["edges"][0]
    used = b["count"] > 0
    top.bar(centers[used], b["accuracy"][used], width=width * 0.9, color="#4C72B0", label="observed frequency")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.plot(b["confidence"][used], b["accuracy"][used], "o", color="#C44E52", ms=4, label="bin mean confidence")
    top.set(ylabel="fraction correct" if kind != MULTI_LABEL else "fraction gold", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{split}: reliability of the {what} (ECE {b['ece']:.3f})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, b["count"], width=width * 0.9, color="#8C8C8C")
    bottom.set(xlabel=what, ylabel="count")
    if b["count"].max(initial=0) > 50 * max(np.median(b["count"][used]), 1):
        bottom.set_yscale("log")  # multi-label: the near-zero bin dwarfs the rest
    return fig


def draw_groups(by_group: dict[str, dict], n_options: int, split: str) -> Figure:
    """Accuracy per query type, sorted, each bar labelled correct/n; chance (1 / options) dashed."""
    names = sorted(by_group, key=lambda k: by_group[k]["accuracy"])
    fig = new_figure(figsize=(8, bar_height(len(names))), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(range(len(names)), [by_group[k]["accuracy"] for k in names], color="#4C72B0")
    labels = [f"{by_group[k]['accuracy']:.3f}  ({by_group[k]['correct']}/{by_group[k]['n']})" for k in names]
    ax.bar_label(bars, labels, padding=3, fontsize=8)
    ax.axvline(1 / n_options, color="grey", ls="--", label=f"chance (1/{n_options})")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlim=(0, 1.25), xlabel="accuracy", title=f"{split}: accuracy by query type")
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def main_split(results: dict) -> str:
    """The split the figures describe: cv's out-of-fold predictions (every training example, each scored by a model
    that did not see it; its predictions file is the one cv writes), else dev (selection), else the pooled fold test
    parts (Recipe-MPR)."""
    for split in ("oof", "dev"):
        if isinstance(results.get(split), dict):
            return split
    return "test"


def read_metrics(run_dir: Path) -> dict[str, list[dict]]:
    """metrics.jsonl records per run: {"": records} for a holdout run, {"fold0": ..., ...} for folds."""
    files = {"": run_dir / "metrics.jsonl"} if (run_dir / "metrics.jsonl").is_file() else {}
    if not files:
        files = {p.parent.name: p for p in sorted(run_dir.glob("fold*/metrics.jsonl"))}
    out = {}
    for name, path in files.items():
        out[name] = read_jsonl(path)
    return out


def _labels(kind: str, records: list[dict], n: int) -> tuple[np.ndarray, np.ndarray]:
    probs = np.array([r["probs"] for r in records], dtype=np.float64).reshape(len(records), n)
    gold = np.array([r["gold"] for r in records], dtype=np.int64)
    return (gold.reshape(len(records), n) if kind == MULTI_LABEL else gold), probs


def draw_run(run_dir: Path, results: dict) -> list[RunFigure]:
    """Every figure that fits the run, in the order report.html shows them."""
    split = main_split(results)
    rep, figs = results[split], []
    kind, names = rep["kind"], rep["label_names"]
    metric = results.get("config", {}).get("metric", "")
    runs = read_metrics(run_dir)
    if runs:
        figs.append(RunFigure("training_curves", "Training curves", draw_training_curves(runs, metric)))
    if keys := robust_keys(runs):
        title = "Loss weights and adversarial loss"
        figs.append(RunFigure("loss_weights", title, draw_loss_weights(runs, keys)))
    if "confusion_matrix" in rep:
        cm = draw_confusion(rep["confusion_matrix"], names, split)
        figs.append(RunFigure("confusion_matrix", "Confusion matrix", cm, svg=True))
    chart = draw_per_class(rep["per_class"], split, sort=kind != MULTIPLE_CHOICE)
    figs.append(RunFigure("per_class", "Per-class precision, recall and F1", chart, svg=True))
    counts = results.get("train", {}).get("label_counts")
    if counts and (kind == MULTI_LABEL or (kind == SINGLE_LABEL and _imbalanced(counts))):
        figs.append(RunFigure("label_frequency", "Label frequency in train", draw_label_frequency(counts), svg=True))
    sources = results.get("sources")
    if sources and kind != MULTIPLE_CHOICE:
        fig = draw_source_counts(sources)
        figs.append(RunFigure("label_sources", "Training labels by source", fig, svg=True))
    records = read_prediction_records(run_dir, split)
    if records:
        gold, probs = _labels(kind, records, len(names))
        chosen = results.get("thresholds", {}).get("per_label", {})
        if kind == MULTI_LABEL:
            fixed = float(results.get("thresholds", {}).get("threshold", rep["threshold"]))
            fig = draw_thresholds(names, gold, probs, chosen, fixed, split)
            figs.append(RunFigure("thresholds", "F1 against threshold per label", fig))
        figs.append(RunFigure("reliability", "Reliability diagram", draw_reliability(kind, gold, probs, split)))
    if rep.get("by_group"):
        fig = draw_groups(rep["by_group"], len(names), split)
        figs.append(RunFigure("accuracy_by_query_type", "Accuracy by query type", fig, svg=True))
    return figs


def _imbalanced(counts: dict[str, int]) -> bool:
    values = list(counts.values())
    return bool(values) and max(values) >= IMBALANCE * max(min(values), 1)


def save_figures(figs: list[RunFigure], out_dir: Path) -> dict[str, Path]:
    """Each figure as out_dir/<name>.png (and .svg where it has `svg`); returns name -> PNG path. Figures of an
    earlier drawing that this one does not make are removed, so figures/ holds this run's only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for f in figs:  # written whole or not at all, as every file of a run
        paths[f.name] = out_dir / f"{f.name}.png"
        atomic_write(paths[f.name], lambda tmp, fig=f.figure: fig.savefig(tmp, dpi=100, format="png"))
        if f.svg:
            atomic_write(out_dir / f"{f.name}.svg", lambda tmp, fig=f.figure: fig.savefig(tmp, format="svg"))
    keep = {p.name for p in paths.values()} | {f"{f.name}.svg" for f in figs if f.svg}
    for old in out_dir.glob("*"):
        if old.suffix in (".png", ".svg") and old.name not in keep:
            old.unlink(missing_ok=True)  # a search's workers may redraw the same figures at once
    return paths
