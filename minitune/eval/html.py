"""report.html: one self-contained page per run, redrawn from the run's files alone (`minitune report RUN_DIR`).

It opens with what a reader wants first: every split's headline scores, the training's story (the score before
training against the best) and what to look at, as HTML; then every figure of eval/figures.py (PNG embedded as a
base64 data URI, so the file opens anywhere with no network and no JavaScript), each split's tables, the
misclassified examples of the main split with the highest confidence (the first thing to read in error analysis),
the surest dev errors with each token coloured by its integrated-gradients attribution (when the run explained
them: eval/attributions.py), a protocol's models, and the settings that shape the run. The parts are report.txt's
(eval/report_parts.py). Inputs: results.json, metrics.jsonl (or fold*/metrics.jsonl), predictions_<split>.jsonl and
attributions_dev.jsonl; figures/ is rewritten.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.rundir import read_results
from minitune.data.kinds import MULTI_LABEL
from minitune.errors import ConfigError
from minitune.eval.attributions import read_attributions
from minitune.eval.figures import draw_run, main_split, save_figures
from minitune.eval.generations import format_generation_notes
from minitune.eval.predictions import read_prediction_records
from minitune.eval.report_parts import (
    KIND_NAMES,
    Table,
    confusion_table,
    groups_table,
    headline,
    notes,
    per_class_table,
    settings_rows,
    splits,
    threshold_tables,
    train_scalars,
    train_tables,
    training_lines,
)
from minitune.eval.sources import source_tables

TOP_ERRORS = 25  # misclassified examples listed
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222;
  line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em;
  margin-top: 2em; } h3 { font-size: 1em; margin: 1.2em 0 .4em; }
p.meta { color: #555; margin-top: 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .9em; margin: .3em 0 1em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.headline td:first-child { font-weight: bold; }
ul.advice li { margin: .3em 0; } .story { margin: .2em 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-weight: bold; margin-bottom: .4em; }
div.ig { margin: .8em 0; } div.ig p { margin: .2em 0; } p.tokens { line-height: 1.9; }
span.tok { padding: .1em .15em; border-radius: 3px; white-space: pre; } span.special { color: #777; }
"""
POSITIVE, NEGATIVE = "26,152,80", "215,48,39"  # green toward the explained label, red away from it


def _e(x) -> str:
    return html.escape(str(x), quote=True)


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
    wrong side of its threshold (a false positive's own, a false negative's complement). Each error's `target` is
    the class its explanation is about (eval/attributions.py): the predicted one, multi-label the surest wrong."""
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
                    target=int(wrongness[i].argmax()),  # the label decided most surely wrong: the one to explain
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
                    target=int(pred[i]),
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
    rows = [[c, text, gold, pred] for c, text, gold, pred in rows]
    return intro + _html_table(Table("", ["confidence", "text", "gold", "predicted"], rows, left=0)).replace(
        "<td class=num>", "<td>"
    )


def _token_span(token: str, score: float, peak: float, special: bool) -> str:
    """A token on a background as strong as its share of the example's largest |attribution|; its score on hover."""
    share = abs(score) / peak if peak > 0 else 0.0
    style = f"background:rgba({POSITIVE if score > 0 else NEGATIVE},{0.85 * share:.2f})"
    cls = "tok special" if special else "tok"
    shown = token.strip() or "\u2423"  # spans are spaced apart, so a token's own spaces go (a bare one: an open box)
    return f'<span class="{cls}" style="{style}" title="{score:+.4f}">{_e(shown)}</span>'


def _explained_section(explained: list[dict] | None) -> str:
    """The surest errors with each token coloured by its integrated-gradients attribution (attributions_dev.jsonl)."""
    if not explained:
        return ""
    first = explained[0]
    legend = (
        f'<span class=tok style="background:rgba({POSITIVE},.85)">pushes toward the explained label</span> '
        f'<span class=tok style="background:rgba({NEGATIVE},.85)">pushes away from it</span>'
    )
    intro = (
        f"<h3>Why: the {len(explained)} surest errors, token by token</h3><p>Integrated gradients "
        f"(Sundararajan et al. 2017) of the explained label's logit (the predicted label; multi-label the label "
        f"decided most surely wrong), {_e(first.get('steps'))} Gauss-Legendre points from the "
        f"{_e(first.get('baseline'))} baseline. Each example's strongest token has the fullest colour; hover a "
        "token for its score. The completeness gap is |sum of the scores - (F(x) - F(baseline))|: near zero, the "
        f"scores account for the whole logit change.</p><p>{legend}</p>"
    )
    blocks = []
    for r in explained:
        scores, tokens = r.get("scores") or [], r.get("tokens") or []
        special = r.get("special") or [False] * len(tokens)
        peak = max((abs(v) for v in scores), default=0.0)
        spans = " ".join(_token_span(t, v, peak, sp) for t, v, sp in zip(tokens, scores, special))
        meta = (
            f"confidence {r.get('confidence', 0):.3f}; gold {r.get('gold')}; predicted {r.get('predicted')}; "
            f"explained label {r.get('target')}; completeness gap {r.get('completeness_gap', 0):.4f} (scores sum "
            f"{r.get('attribution_sum', 0):.4f}, F(x) - F(baseline) {r.get('logit_difference', 0):.4f})"
        )
        blocks.append(f"<div class=ig><p class=meta>{_e(meta)}</p><p class=tokens>{spans}</p></div>")
    return intro + "".join(blocks)


def _html_table(table: Table) -> str:
    """A report part as an HTML table (its text columns left, its numbers right), scrolling on its own if wide."""
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{'' if i < table.left else ' class=num'}>{_e(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in table.rows
    )
    title = f"<h3>{_e(table.title)}</h3>" if table.title else ""
    return f"{title}<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def _headline_section(results: dict) -> str:
    """The scores of every split, the training's story (start against best) and what to look at first."""
    rows = [
        f"<tr><td>{_e(name)}</td><td class=num>{rep['n_examples']}</td><td>{_e(headline(rep))}</td></tr>"
        for name, rep in splits(results)
    ]
    table = f"<table class=headline><tr><th>split</th><th>examples</th><th>scores</th></tr>{''.join(rows)}</table>"
    train = results.get("train") or {}
    story = "".join(f"<p class=story>{_e(line)}</p>" for line in training_lines(train))
    main = main_split(results)
    tuned_on = (results.get("thresholds") or {}).get("tuned_on")
    advice = notes(main, results[main], tuned_on) if isinstance(results.get(main), dict) else []
    advice_html = "".join(f"<li>{_e(n)}</li>" for n in advice)
    parts = [f"<h2>Headline</h2>{table}{story}"]
    if advice_html:
        parts.append(f"<h2>What to look at ({_e(main)})</h2><ul class=advice>{advice_html}</ul>")
    return "\n".join(parts)


def _split_sections(results: dict) -> str:
    """Each split's tables (per class, thresholds, confusion matrix, groups) and notes (the main split's: above)."""
    main, out = main_split(results), []
    tuned_on = (results.get("thresholds") or {}).get("tuned_on")
    for name, rep in splits(results):
        tables = [per_class_table(rep)]
        if "tuned" in rep:
            tables += threshold_tables(rep)
        if "confusion_matrix" in rep:
            tables.append(confusion_table(rep))
        if "by_group" in rep:
            tables.append(groups_table(rep["by_group"]))
        html_parts = [f"<h2>{_e(name)}: {rep['n_examples']} examples</h2>", *map(_html_table, tables)]
        if "generation" in rep:
            items = "".join(f"<li>{_e(line)}</li>" for line in format_generation_notes(rep["generation"]))
            html_parts.append(f"<ul>{items}</ul>")
        if name != main and (said := notes(name, rep, tuned_on)):
            html_parts.append("<ul class=advice>" + "".join(f"<li>{_e(n)}</li>" for n in said) + "</ul>")
        out.append("\n".join(html_parts))
    return "\n".join(out)


def _training_section(results: dict) -> str:
    """A protocol's rows (folds, members) and its own numbers."""
    train = results.get("train") or {}
    tables = train_tables(train)
    scalars = train_scalars(train) if "step" not in train else []
    if not tables and not scalars:
        return ""
    lead = f"<p>{_e(', '.join(scalars))}</p>" if scalars else ""
    return "<h2>Models trained</h2>" + lead + "".join(map(_html_table, tables))


def _sources_section(results: dict) -> str:
    """Several training sources: what each brought, and the scores on the labels they feed."""
    if not results.get("sources"):
        return ""
    return "<h2>Training sources</h2>" + "".join(map(_html_table, source_tables(results["sources"])))


def _settings_section(results: dict) -> str:
    rows = settings_rows(results.get("settings") or {})
    table = _html_table(Table("", ["setting", "value"], rows, left=2)) if rows else ""
    return (
        "<h2>Settings</h2><p>The settings that shape this run: the main ones and every one changed from its default "
        "(config.json holds them all).</p>" + table
    )


def render_html(
    results: dict,
    figures: list[tuple[str, Path]],
    records: list[dict] | None,
    run_dir: Path,
    explained: list[dict] | None = None,
) -> str:
    title = f"minitune: {results.get('task', '?')} / {results.get('model', '?')}"
    first = splits(results)[0][1]
    kind = KIND_NAMES.get(first["kind"], first["kind"])
    seconds = (results.get("train") or {}).get("wall_seconds")
    meta = f"{kind}, {len(first['label_names'])} labels; run folder <code>{_e(run_dir)}</code>"
    meta += f"; {seconds} s" if seconds is not None else ""
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>",
        f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1><p class=meta>{meta}</p>",
        _headline_section(results),
        _sources_section(results),
        "<h2>Figures</h2>",
        *(_figure(t, p) for t, p in figures),
        _split_sections(results),
        f"<h2>Most confident errors ({_e(main_split(results))})</h2>",
        _errors_section(results, records),
        _explained_section(explained),
        _training_section(results),
        _settings_section(results),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


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
    explained = read_attributions(run_dir) if main_split(results) == "dev" else None
    page = render_html(results, [(f.title, pngs[f.name]) for f in figs], records, run_dir, explained)
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out
