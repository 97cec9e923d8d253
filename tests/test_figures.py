"""Figures and report.html: what is drawn is what results.json and the predictions file hold, every figure is
embedded in the self-contained page, 28 labels stay readable, and `minitune report` redraws a run without its model.

Run directories are built from real metrics code (classification_report, choose_thresholds) on seeded random
probabilities, so the drawing is checked against numbers it did not compute itself; one test trains for real.
"""

import base64
import itertools
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from minitune.checkpoints.rundir import write_results
from minitune.cli import main
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.tasks import Example, label_counts
from minitune.eval.figures import draw_run, reliability_bins
from minitune.eval.html import write_html_report
from minitune.eval.metrics import classification_report
from minitune.eval.predictions import write_prediction_records
from minitune.eval.report_parts import headline
from minitune.eval.thresholds import choose_thresholds, per_label_f1

EMOTIONS = [
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
]


def _metrics_jsonl(path: Path, metric: str) -> None:
    lines = [dict(type="train", step=s, epoch=0, loss=1 / s, lr=1e-5 * s, grad_norm=0.5 + s) for s in range(1, 9)]
    lines += [{"type": "eval", "step": s, "epoch": 0, "improved": True, metric: 0.1 * s} for s in (4, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def make_run(tmp_path: Path, kind: str, names: list[str], n: int = 120, seed: int = 0) -> Path:
    """A finished run's directory: results.json, metrics.jsonl and predictions, as the runner writes them."""
    rng = np.random.default_rng(seed)
    out = tmp_path / kind
    out.mkdir()
    c = len(names)
    examples = [Example(text=f"example <{i}> & text") for i in range(n)]
    if kind == MULTI_LABEL:
        gold = (rng.random((n, c)) < np.linspace(0.4, 0.02, c)).astype(np.uint8)
        probs = np.clip(gold * 0.5 + rng.random((n, c)) * 0.6, 0, 1)
        train = (rng.random((3 * n, c)) < np.linspace(0.4, 0.02, c)).astype(np.uint8)
    else:
        gold = rng.integers(0, c, n) if c > 2 else (rng.random(n) < 0.3).astype(np.int64)
        probs = rng.dirichlet(np.ones(c), n)
        probs[np.arange(n), gold] += rng.random(n)  # better than chance, wrong often enough
        probs /= probs.sum(1, keepdims=True)
        train = rng.integers(0, c, 3 * n) if c > 2 else (rng.random(3 * n) < 0.3).astype(np.int64)
    metric = "accuracy" if kind == MULTIPLE_CHOICE else "macro_f1"
    results = {"task": "t", "model": "m", "config": {"metric": metric, "lr": 2e-5}, "train": {"epochs": 1}}
    split = "test" if kind == MULTIPLE_CHOICE else "dev"
    groups = [rng.choice(["Specific", "Negated", "Temporal"], 2, replace=False).tolist() for _ in range(n)]
    if kind == MULTI_LABEL:
        results["thresholds"] = choose_thresholds(gold, probs, names, 0.3, metric)
        tuned = np.array(list(results["thresholds"]["per_label"].values()))
        results[split] = classification_report(kind, gold, probs, names, 0.3, tuned_thresholds=tuned)
    else:
        results[split] = classification_report(kind, gold, probs, names, groups=groups if split == "test" else None)
    if kind != MULTIPLE_CHOICE:
        results["train"]["label_counts"] = label_counts(kind, train, names)
    write_results(out / "results.json", results)
    write_prediction_records(out, split, examples, gold, probs)
    _metrics_jsonl(out / "metrics.jsonl", metric)
    return out


def figures(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    return {f.name: f.figure for f in draw_run(run, results)}, results


def bar_widths(ax) -> list[list[float]]:
    return [[p.get_width() for p in c.patches] for c in ax.containers]


def test_confusion_matrix_cells_are_those_of_results(tmp_path):
    run = make_run(tmp_path, SINGLE_LABEL, ["not_humor", "humor"])
    figs, results = figures(run)
    cm = np.array(results["dev"]["confusion_matrix"])
    counts_ax, norm_ax = figs["confusion_matrix"].axes[:2]  # then their colorbars
    np.testing.assert_array_equal(counts_ax.images[0].get_array(), cm)
    np.testing.assert_allclose(norm_ax.images[0].get_array(), cm / cm.sum(1, keepdims=True))
    assert [t.get_text() for t in counts_ax.texts] == [str(v) for v in cm.ravel()]
    assert [t.get_text() for t in counts_ax.get_yticklabels()] == ["not_humor", "humor"]


@pytest.mark.parametrize("kind", [SINGLE_LABEL, MULTI_LABEL, MULTIPLE_CHOICE])
def test_per_class_bars_are_those_of_results(tmp_path, kind):
    names = {SINGLE_LABEL: ["no", "yes"], MULTI_LABEL: EMOTIONS, MULTIPLE_CHOICE: [f"choice_{i}" for i in range(5)]}
    run = make_run(tmp_path, kind, names[kind])
    figs, results = figures(run)
    rep = results["test" if kind == MULTIPLE_CHOICE else "dev"]
    ax = figs["per_class"].axes[0]
    shown = [t.get_text().split("  (n=") for t in ax.get_yticklabels()]
    assert sorted(name for name, _ in shown) == sorted(rep["per_class"])
    for (name, support), p, r, f in zip(shown, *bar_widths(ax)):
        c = rep["per_class"][name]
        assert (p, r, f, int(support[:-1])) == (c["precision"], c["recall"], c["f1"], c["support"])
    if kind != MULTIPLE_CHOICE:  # sorted by F1, best on top (the last row of a horizontal bar chart)
        assert bar_widths(ax)[2] == sorted(bar_widths(ax)[2])


def test_multilabel_figures_show_train_counts_and_chosen_thresholds(tmp_path):
    run = make_run(tmp_path, MULTI_LABEL, EMOTIONS)
    figs, results = figures(run)
    assert "confusion_matrix" not in figs
    ax = figs["label_frequency"].axes[0]
    shown = dict(zip([t.get_text() for t in ax.get_yticklabels()], bar_widths(ax)[0]))
    assert shown == results["train"]["label_counts"]
    gold = np.array([r["gold"] for r in map(json.loads, (run / "predictions_dev.jsonl").read_text().splitlines())])
    probs = np.array([r["probs"] for r in map(json.loads, (run / "predictions_dev.jsonl").read_text().splitlines())])
    chosen = results["thresholds"]["per_label"]
    panels = [a for a in figs["thresholds"].axes if a.get_visible()]
    assert len(panels) == 28
    for a in panels:
        name = a.get_title().split(" (n=")[0]
        i = EMOTIONS.index(name)
        fixed_line, tuned_line = a.lines[1], a.lines[2]
        assert fixed_line.get_xdata()[0] == 0.3 and tuned_line.get_xdata()[0] == chosen[name]
        grid, f1 = a.lines[0].get_data()
        # The curve's value at the tuned threshold is that label's F1 there, computed by the thresholds module.
        at = int(np.argmin(np.abs(grid - chosen[name])))
        expected = per_label_f1(gold, np.round(probs, 6), np.full(28, grid[at]))[i]
        assert f1[at] == pytest.approx(expected)


def test_reliability_bins_and_query_type_accuracy(tmp_path):
    run = make_run(tmp_path, MULTIPLE_CHOICE, [f"choice_{i}" for i in range(5)])
    figs, results = figures(run)
    ax = figs["accuracy_by_query_type"].axes[0]
    shown = dict(zip([t.get_text() for t in ax.get_yticklabels()], bar_widths(ax)[0]))
    assert shown == {k: g["accuracy"] for k, g in results["test"]["by_group"].items()}
    count_ax = figs["reliability"].axes[1]
    assert sum(bar_widths(count_ax) and [p.get_height() for p in count_ax.patches]) == 120
    b = reliability_bins(np.array([0.05, 0.15, 0.95, 0.99]), np.array([0, 0, 1, 0]), bins=10)
    assert b["count"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert b["ece"] == pytest.approx((0.05 + 0.15 + abs(0.5 - 0.97) * 2) / 4)


@pytest.mark.parametrize("kind", [MULTI_LABEL, SINGLE_LABEL])
def test_28_label_text_does_not_overlap(tmp_path, kind):
    figs, _ = figures(make_run(tmp_path, kind, EMOTIONS))
    names = ("per_class", "label_frequency", "thresholds") if kind == MULTI_LABEL else ("confusion_matrix",)
    for name in names:
        fig = figs[name]
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        boxes = []
        for ax in fig.axes:
            if ax.get_visible():
                lo, hi = sorted(ax.get_xlim())
                shown_x = [t for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]  # drawn ones only
                texts = [*ax.get_yticklabels(), *shown_x, ax.title, *ax.texts]
                boxes += [t.get_window_extent(renderer) for t in texts if t.get_text() and t.get_visible()]
        assert len(boxes) >= 28
        overlaps = [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
        assert not overlaps, f"{name}: {len(overlaps)} overlapping texts"
        page = fig.bbox
        assert all(b.x0 >= page.x0 - 1 and b.x1 <= page.x1 + 1 for b in boxes), f"{name}: text cut off"


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.figure_ids, self.tags, self.pre, self.cells, self._in = [], [], set(), "", [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "figure":
            self.figure_ids.append(a["id"])
        self._in = tag

    def handle_data(self, data):
        if self._in == "pre":
            self.pre += data
        if self._in == "td":
            self.cells.append(data)

    def row_of(self, first: str) -> list[str]:
        """The cells of the first table row that starts with `first`."""
        i = self.cells.index(first)
        return self.cells[i : i + 6]

    def handle_endtag(self, tag):
        self._in = None


@pytest.mark.parametrize("kind", [SINGLE_LABEL, MULTI_LABEL, MULTIPLE_CHOICE])
def test_html_is_self_contained_and_embeds_every_figure(tmp_path, kind):
    names = {SINGLE_LABEL: ["no", "yes"], MULTI_LABEL: EMOTIONS[:6], MULTIPLE_CHOICE: [f"choice_{i}" for i in range(5)]}
    run = make_run(tmp_path, kind, names[kind])
    page_text = write_html_report(run).read_text()
    page = Page()
    page.feed(page_text)
    pngs = sorted((run / "figures").glob("*.png"))
    assert [f"fig-{p.stem}" for p in pngs] == sorted(page.figure_ids)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in page.images}
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert embedded == {p.read_bytes() for p in pngs}
    assert "script" not in page.tags and "http://" not in page_text and "https://" not in page_text
    results = json.loads((run / "results.json").read_text())
    # It opens with the headline scores as HTML, then the figures; the metrics are tables, not report.txt in a <pre>.
    assert "pre" not in page.tags and page_text.index("<h2>Headline</h2>") < page_text.index("<h2>Figures</h2>")
    rep = results["dev"] if "dev" in results else results["test"]
    assert headline(rep) in page_text.replace("&#x27;", "'")
    for name, c in rep["per_class"].items():  # report.txt's per-class table, cell by cell
        assert [name, f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}"] == page.row_of(name)[:4]
    assert "example <" in page_text.replace("&lt;", "<") and "<0>" not in page_text  # texts are escaped


def test_most_confident_errors_come_first_and_are_errors(tmp_path):
    run = make_run(tmp_path, SINGLE_LABEL, ["no", "yes"])
    page = Page()
    page.feed(write_html_report(run).read_text())
    records = [json.loads(line) for line in (run / "predictions_dev.jsonl").read_text().splitlines()]
    wrong = sorted((max(r["probs"]), r["text"]) for r in records if np.argmax(r["probs"]) != r["gold"])[::-1]
    # Error rows come after the figures: confidence, text, gold, predicted; the config table follows.
    start = page.cells.index(f"{wrong[0][0]:.3f}")
    rows = [page.cells[start + 4 * k : start + 4 * k + 4] for k in range(min(25, len(wrong)))]
    assert [r[0] for r in rows] == [f"{c:.3f}" for c, _ in wrong[:25]]
    assert all(r[2] != r[3] for r in rows)


def test_training_run_writes_figures_and_report_redraws_them(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,label\n" + "great film,pos\nawful film,neg\nsuperb acting,pos\nboring plot,neg\n" * 6)
    out = tmp_path / "run"
    args = ["--task", "custom", "--train-file", str(f), "--dev-file", str(f), "--model", "ffnn"]
    assert main([*args, "--output-dir", str(out), "--epochs", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train"]["label_counts"] == {"neg": 12, "pos": 12}
    records = [json.loads(line) for line in (out / "predictions_dev.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records[:2]] == ["great film", "awful film"] and len(records) == 24
    first = sorted(p.name for p in (out / "figures").iterdir())
    assert {"training_curves.png", "confusion_matrix.png", "per_class.png", "reliability.png"} <= set(first)
    assert (out / "report.html").is_file()
    for p in (out / "figures").iterdir():
        p.unlink()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert sorted(p.name for p in (out / "figures").iterdir()) == first and (out / "report.html").is_file()


def test_report_of_a_directory_without_results_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path}: no results.json; pass the output directory of a finished training run"


@pytest.mark.parametrize("kind", [MULTI_LABEL, SINGLE_LABEL, MULTIPLE_CHOICE])
def test_no_figure_title_is_cut_off(tmp_path, kind):
    """Every title of every figure lies inside its figure (report.html shows the figures as they are drawn)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    names = {SINGLE_LABEL: ["no", "yes"], MULTI_LABEL: EMOTIONS[:6], MULTIPLE_CHOICE: [f"choice_{i}" for i in range(5)]}
    figs, _ = figures(make_run(tmp_path, kind, names[kind]))
    for name, fig in figs.items():
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        titles = [ax.title for ax in fig.axes if ax.get_visible()] + ([fig._suptitle] if fig._suptitle else [])
        for t in titles:
            if t.get_text():
                box, page = t.get_window_extent(renderer), fig.bbox
                assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1, f"{name}: {t.get_text()!r} is cut off"
