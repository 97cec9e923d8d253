"""report.html: one self-contained page per run, redrawn from the run's files alone (`minitune report RUN_DIR`).

It holds the run's config, the metrics tables of report.txt, every figure of eval/figures.py (PNG embedded as a
base64 data URI, so the file opens anywhere with no network and no JavaScript), and the misclassified examples of
the main split with the highest confidence, the first thing to read in error analysis. Inputs: results.json,
metrics.jsonl (or fold*/metrics.jsonl) and predictions_<split>.jsonl; figures/ is rewritten on the way.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.rundir import read_results
from minitune.data.kinds import MULTI_LABEL
from minitune.errors import ConfigError
from minitune.eval.figures import draw_run, main_split, save_figures
from minitune.eval.predictions import read_prediction_records
from minitune.eval.report import format_report

TOP_ERRORS = 25  # misclassified examples listed
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .9em; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f8f8f8; padding: 1em; overflow-x: auto; font-size: .85em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-weight: bold; margin-bottom: .4em; }
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _table(header: list[str], rows: list[list], numeric: tuple[int, ...] = ()) -> str:
    """An HTML table; the columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{_e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _config_table(config: dict) -> str:
    rows = [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in config.items() if v is not None]
    return _table(["setting", "value"], rows)


def _figure(title: str, png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure id="fig-{_e(png.stem)}"><figcaption>{_e(title)}</figcaption>'
        f'<img alt="{_e(title)}" src="data:image/png;base64,{data}"></figure>'
    )


def _decision_thresholds(results: dict, rep: dict) -> np.ndarray:
    """The thresholds the saved model predicts with: the tuned ones when the run kept them, else the fixed one."""
    names, thr = rep["label_names"], results.get("thresholds", {})
    if thr.get("use") == "tuned":
        return np.array([thr["per_label"][n] for n in names])
    return np.full(len(names), float(thr.get("threshold", rep.get("threshold", 0.5))))


def confident_errors(results: dict, records: list[dict], top: int = TOP_ERRORS) -> list[dict]:
    """The wrongly predicted examples, most confident first. Single-label and multiple choice: the argmax is not
    gold, ranked by its probability. Multi-label: any label decided wrongly, ranked by the probability on the
    wrong side of its threshold (a false positive's own, a false negative's complement)."""
    rep = results[main_split(results)]
    names, kind = rep["label_names"], rep["kind"]
    probs = np.array([r["probs"] for r in records], dtype=np.float64).reshape(len(records), len(names))
    errors = []
    if kind == MULTI_LABEL:
        gold = np.array([r["gold"] for r in records], dtype=bool).reshape(probs.shape)
        pred = probs >= _decision_thresholds(results, rep)
        wrongness = np.where(pred & ~gold, probs, 0) + np.where(~pred & gold, 1 - probs, 0)
        for i in np.flatnonzero((pred != gold).any(axis=1)):
            errors.append(
                dict(
                    record=records[i],
                    gold=", ".join(n for n, g in zip(names, gold[i]) if g) or "(none)",
                    predicted=", ".join(f"{n} {p:.2f}" for n, p, c in zip(names, probs[i], pred[i]) if c) or "(none)",
                    confidence=float(wrongness[i].max()),
                )
            )
    else:
        gold = np.array([r["gold"] for r in records], dtype=np.int64)
        pred = probs.argmax(axis=1)
        for i in np.flatnonzero(pred != gold):
            errors.append(
                dict(
                    record=records[i],
                    gold=_choice(records[i], names, gold[i]),
                    predicted=_choice(records[i], names, pred[i]),
                    confidence=float(probs[i, pred[i]]),
                )
            )
    return sorted(errors, key=lambda e: -e["confidence"])[:top]


def _choice(record: dict, names: list[str], i: int) -> str:
    """A class name, or for multiple choice the option's text."""
    choices = record.get("choices")
    return f"{names[i]}: {choices[i]}" if choices else names[i]


def _errors_section(results: dict, records: list[dict] | None) -> str:
    split = main_split(results)
    if not records:
        return f"<p>No predictions_{_e(split)}.jsonl in the run directory: no examples to show.</p>"
    errors = confident_errors(results, records)
    if not errors:
        return "<p>Every example is predicted correctly.</p>"
    rows = []
    for e in errors:
        r = e["record"]
        text = r["text"] + (f" [SEP] {r['pair']}" if r.get("pair") else "")
        rows.append([f"{e['confidence']:.3f}", text, e["gold"], e["predicted"]])
    intro = (
        f"<p>The {len(errors)} misclassified {_e(split)} examples the model was surest of "
        "(confidence: the probability behind the wrong decision).</p>"
    )
    return intro + _table(["confidence", "text", "gold", "predicted"], rows, numeric=(0,))


def render_html(results: dict, figures: list[tuple[str, Path]], records: list[dict] | None, run_dir: Path) -> str:
    title = f"minitune: {results.get('task', '?')} / {results.get('model', '?')}"
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>",
        f"<p>Run directory: <code>{_e(run_dir)}</code></p>",
        "<h2>Metrics</h2>",
        f"<pre>{_e(format_report(results))}</pre>",
        "<h2>Figures</h2>",
        *(_figure(t, p) for t, p in figures),
        f"<h2>Most confident errors ({_e(main_split(results))})</h2>",
        _errors_section(results, records),
        "<h2>Configuration</h2>",
        _config_table(results.get("config", {})),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_html_report(run_dir: Path) -> Path:
    """Draw figures/ and write report.html from the files of a finished run in `run_dir`; return its path."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no results.json; pass the output directory of a finished training run")
    results = read_results(run_dir)
    figs = draw_run(run_dir, results)
    pngs = save_figures(figs, run_dir / "figures")
    records = read_prediction_records(run_dir, main_split(results))
    page = render_html(results, [(f.title, pngs[f.name]) for f in figs], records, run_dir)
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out
