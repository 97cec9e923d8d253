"""The figures of a search (experiments/search_report.py), drawn as a run's are (eval/figures.py: plain data in, a
matplotlib Figure out, nothing global): the optimisation history, each setting's importance, and one slice per
setting. Finished trials are dots, pruned ones grey crosses at the score where they stopped.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from minitune.eval.figures import COLORS, bar_height, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PRUNED = "#999999"


def _scored(rows: list[dict], state: str) -> list[dict]:
    return [r for r in rows if r["state"] == state and r["value"] is not None]


def draw_history(rows: list[dict], metric: str) -> Figure:
    """Each trial's score by trial number, and the best finished score so far."""
    fig = new_figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.add_subplot()
    done, pruned = _scored(rows, "complete"), _scored(rows, "pruned")
    ax.scatter([r["trial"] for r in done], [r["value"] for r in done], color=COLORS["f1"], label="finished", zorder=3)
    ax.scatter([r["trial"] for r in pruned], [r["value"] for r in pruned], color=PRUNED, marker="x", label="pruned")
    best, xs, ys = -math.inf, [], []
    for r in sorted(done, key=lambda r: r["trial"]):
        best = max(best, r["value"])
        xs, ys = [*xs, r["trial"]], [*ys, best]
    if xs:  # drawn on to the last trial, finished or not
        last = max(r["trial"] for r in rows)
        ax.step([*xs, last], [*ys, best], where="post", color=COLORS["precision"], label="best so far")
    ax.set(xlabel="trial", ylabel=f"dev {metric}", title="optimisation history")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(loc="best")
    return fig


def draw_importance(weights: dict[str, float]) -> Figure:
    """Each setting's importance, largest on top."""
    names = sorted(weights, key=weights.get)
    fig = new_figure(figsize=(6, bar_height(len(names))), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [weights[n] for n in names], color=COLORS["precision"])
    for i, n in enumerate(names):
        ax.annotate(f"{weights[n]:.2f}", (weights[n], i), xytext=(3, 0), textcoords="offset points", va="center")
    ax.set(xlabel="importance (share of the score's variance, fANOVA)", xlim=(0, 1.1), title="setting importance")
    return fig


def draw_slices(rows: list[dict], space: dict[str, dict], logs: dict[str, bool], metric: str) -> Figure:
    """The score against each setting's value, one panel per setting (categories in their listed order)."""
    names = list(space)
    fig = new_figure(figsize=(3.6 * len(names), 3.4), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        choices = space[name].get("choices")
        for state, style in (("complete", dict(color=COLORS["f1"])), ("pruned", dict(color=PRUNED, marker="x"))):
            points = [(json.loads(r["settings"]).get(name), r["value"]) for r in _scored(rows, state)]
            points = [(x, y) for x, y in points if x is not None]
            xs = [choices.index(x) if choices else x for x, _ in points]
            ax.scatter(xs, [y for _, y in points], **style)
        if choices:
            ax.set_xticks(range(len(choices)), [str(c) for c in choices], rotation=30, ha="right")
        elif logs.get(name):
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel=f"dev {metric}" if ax is axes[0] else None)
        ax.grid(alpha=0.3)
    fig.suptitle("score by setting (finished: dots; pruned: crosses)")
    return fig
