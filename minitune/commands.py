"""The commands that read finished runs: predict, explain, report, export, compare, and sweep (which trains its
trials through runner.run_train). Each is a parser and a function taking its arguments; cli.py dispatches to them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.runlock import locked, require_finished
from minitune.config.sections import GenerativeSettings
from minitune.config.validate import check_generative_settings
from minitune.data.custom import Columns, read_rows
from minitune.data.examples import Example
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.errors import ConfigError, did_you_mean
from minitune.eval.attributions import BASELINES, attribution_record, check_steps, explain_texts, top_tokens
from minitune.eval.html import write_html_report
from minitune.eval.predictions import label_predictions
from minitune.eval.scoring import probabilities
from minitune.experiments.compare import compare, markdown_table, write_comparison
from minitune.experiments.search import run_search
from minitune.experiments.search_space import Search, read_plan
from minitune.experiments.sweep import run_sweep
from minitune.export import export_onnx
from minitune.flags import CommandParser, add_setting, choices_of, setting_field
from minitune.predict import Predictor, head_tokenizer, predict_file
from minitune.predict_generative import PlainAsk
from minitune.runner import run_train


def predict_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune predict",
        description="Label a file with a trained model: the output keeps the input's columns (id first) and adds "
        "the predicted label(s) and one probability per label.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--model", required=True, help="a training run's output directory (or its model/ folder)")
    p.add_argument(
        "--input",
        required=True,
        help=".csv, .tsv, .txt or .jsonl file with the texts (a multiple-choice model: .json or .jsonl with a query "
        "and its options per item)",
    )
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--text-col", default=None, help="column holding the text (default: text; multiple choice: query)")
    p.add_argument(
        "--options-col", default="options", help="multiple choice: the key of the options (a list, or id: text)"
    )
    p.add_argument("--pair-col", default=None, help="column holding the second segment, if the model used one")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    p.add_argument(
        "--max-length", type=int, default=None, help="truncate inputs to this many tokens (default: as the run trained)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="multi-label: one threshold for every label "
        "(default: the tuned per-label thresholds saved with the model, else 0.5)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default=None,
        help="autocast for the forward passes (default: the precision the run trained and scored dev in)",
    )
    add_ask_flags(p)
    return p


ASK_SETTINGS = (
    "answer_mode",
    "shots",
    "prompt_template",
    "max_new_tokens",
)  # the generative section, as train takes it


def add_ask_flags(p: argparse.ArgumentParser) -> None:
    """`predict --head generative`: ask a plain instruct checkpoint (predict_generative.py)."""
    g = p.add_argument_group("a plain instruct checkpoint (--head generative; a tuned generative run needs none)")
    g.add_argument("--head", choices=["classifier", "generative"], default=None, help="generative: the model answers")
    g.add_argument("--task", default=None, help="the label set and instruction of this task (its training file)")
    g.add_argument("--labels", default=None, help="the label set, comma-separated (instead of --task)")
    g.add_argument("--multi-label", action="store_true", help="with --labels: several labels may apply")
    g.add_argument("--data-dir", default=None, help="where --task's files are")
    g.add_argument("--train-file", default=None, help="--task custom: the file whose labels are the label set")
    g.add_argument("--label-col", default=None, help="--task custom: the label column (default: label)")
    for name in ("seed", *ASK_SETTINGS):
        add_setting(g, name, default=setting_field(name).default, choices=choices_of(name) or None)


def run_predict(argv: list[str]) -> Path:
    args = predict_parser().parse_args(argv)
    output_file(args.output)
    check_generative_settings(args.shots, args.max_new_tokens)
    names = ("task", "labels", "multi_label", "data_dir", "train_file", "label_col")
    if args.head != "generative" and any(getattr(args, n) for n in names):
        raise ConfigError("--task, --labels and their flags ask a plain instruct checkpoint: add --head generative")
    generative = GenerativeSettings(**{n: getattr(args, n) for n in ASK_SETTINGS})
    ask = PlainAsk(**{n: getattr(args, n) for n in names}, seed=args.seed, generative=generative)
    ask = ask if args.head == "generative" else None
    path, n = predict_file(
        Path(args.model),
        Path(args.input),
        Path(args.output),
        text_col=args.text_col,
        pair_col=args.pair_col,
        options_col=args.options_col,
        batch_size=args.batch_size,
        max_length=args.max_length,
        threshold=args.threshold,
        device=args.device,
        ask=ask,
        precision=args.precision,
    )
    print(f"wrote {n} predictions to {path}")
    return path


SHOWN_ROWS = 20  # explain prints each row's top tokens up to this many rows; more go to the file only


def explain_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune explain",
        description="Score each token of each text by integrated gradients (eval/attributions.py): how much it moved "
        "the explained label's logit from the baseline's. Writes one JSON line per input row (text, predicted and "
        "explained label, tokens, scores, completeness gap), and prints each row's top tokens when there are at most "
        "20 rows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--model", required=True, help="a classifier run's output directory (or its model/ folder)")
    p.add_argument("--input", required=True, help=".csv, .tsv, .txt or .jsonl file with the texts")
    p.add_argument("--output", default="attributions.jsonl", help="JSONL file to write")
    p.add_argument("--text-col", default=None, help="column holding the text (default: text)")
    p.add_argument("--pair-col", default=None, help="column holding the second segment, if the model used one")
    p.add_argument("--steps", type=int, default=setting_field("ig_steps").default, help="path points (quadrature)")
    baseline = setting_field("ig_baseline").default
    p.add_argument(
        "--baseline", choices=BASELINES, default=baseline, help=setting_field("ig_baseline").metadata["help"]
    )
    p.add_argument(
        "--label", default=None, help="the label to explain in every row (unset: each text's most probable label)"
    )
    p.add_argument(
        "--max-length", type=int, default=None, help="truncate inputs to this many tokens (default: as the run trained)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="path points per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    return p


def run_explain(argv: list[str]) -> Path:
    args = explain_parser().parse_args(argv)
    output_file(args.output, "out.jsonl")
    check_steps(args.steps, args.batch_size)
    records = explain_file(Path(args.model), Path(args.input), args)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(args.output, lines)
    gaps = [r["completeness_gap"] for r in records if "completeness_gap" in r]
    if len(records) <= SHOWN_ROWS:
        for r in records:
            if "completeness_gap" in r:
                print(f"row {r['row']}: predicted {r['predicted']!r}, explained {r['target']!r}: {top_tokens(r)}")
    print(f"wrote {len(records)} rows of token scores to {args.output} (completeness gap at most {max(gaps):.2g})")
    return Path(args.output)


def explain_file(model_path: Path, input_path: Path, args: argparse.Namespace) -> list[dict]:
    """One record per row of `input_path`: a row whose text is empty keeps its line, with no tokens."""
    predictor = Predictor(model_path, batch_size=args.batch_size, max_length=args.max_length, device=args.device)
    _check_explainable(predictor, model_path)
    names = predictor.label_names
    if args.label is not None and args.label not in names:
        raise ConfigError(
            f"`label` {args.label!r} is not one of the model's labels ({', '.join(names)})"
            f"{did_you_mean(args.label, names)}"
        )
    rows = read_rows(input_path, Columns(text=args.text_col or "text", label=None, pair=args.pair_col), keep_empty=True)
    filled = [(i, r) for i, r in enumerate(rows) if r.text.strip()]
    examples = [Example(r.text, pair=(r.pair or "") if args.pair_col else None) for _, r in filled]
    target = None if args.label is None else names.index(args.label)
    done = explain_texts(
        predictor.model.to(predictor.device),
        head_tokenizer(predictor.model_dir),
        examples,
        max_length=predictor.max_length,
        targets=[target] * len(examples),
        steps=args.steps,
        baseline=args.baseline,
        batch_size=args.batch_size,
        progress=len(examples) > SHOWN_ROWS,
    )
    kind = MULTI_LABEL if predictor.multi_label else SINGLE_LABEL
    explained, records = dict(zip((i for i, _ in filled), done)), []
    for i, r in enumerate(rows):
        rec = {"row": i} | ({"id": r.fields["id"]} if r.fields and "id" in r.fields else {}) | {"text": r.text}
        rec |= {"pair": r.pair} if args.pair_col else {}
        a = explained.get(i)
        if a is None:  # an empty text keeps its line
            records.append(rec | {"predicted": None, "tokens": [], "scores": []})
            continue
        predicted = label_predictions(probabilities(a.logits[None], kind), names, predictor.thresholds)[0]
        records.append(rec | {"predicted": predicted} | attribution_record(a, names, args.steps, args.baseline))
    return records


def _check_explainable(predictor: Predictor, model_path: Path) -> None:
    """One classifier of texts (or pairs): integrated gradients explain one class logit of one model."""
    if predictor.members:
        why = f"an ensemble of {len(predictor.members)} models: explain one of them, e.g. {predictor.members[0]}"
    elif predictor.kind == MULTIPLE_CHOICE:
        why = "a multiple-choice model, which explain does not cover: pass a classification run"
    elif predictor.kind != "classifier":
        why = "a --head generative model, which answers in words with no class logit: pass a classification run"
    else:
        return
    raise ConfigError(f"`model` {model_path} is {why}")


def report_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune report",
        allow_abbrev=False,
        description="Redraw figures/ and report.html of a finished run from its results.json, metrics.jsonl and "
        "predictions files (no model needed).",
    )
    p.add_argument("run_dir", help="the output directory of a training run")
    return p


def export_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune export",
        allow_abbrev=False,
        description="Export a trained classifier (LoRA merged, NF4 dequantized) for other runtimes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a model directory written by a training run (its model/ folder)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    return p


def output_file(path: str, example: str = "out.csv") -> None:
    """An output that is to be a file must not name an existing folder."""
    if Path(path).is_dir():
        raise ConfigError(f"--output {path} is a folder: give the file to write, e.g. {Path(path) / example}")


def run_report(argv: list[str]) -> Path:
    run_dir = Path(report_parser().parse_args(argv).run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder; pass a finished run's output directory")
    require_finished(run_dir, None)
    with locked(run_dir):  # not while a run writes there
        path = write_html_report(run_dir)
    print(f"wrote {path} and {path.parent / 'figures'}/")
    return path


def run_export(argv: list[str]) -> Path:
    args = export_parser().parse_args(argv)
    output_file(args.output, "model.onnx")
    path = export_onnx(Path(args.model), Path(args.output), opset=args.opset)
    print(f"wrote {path}")
    return path


def sweep_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune sweep",
        allow_abbrev=False,
        description="Train the trials of a sweep file (a base config, a list or grid of variations, phases with "
        "their own budgets and how many trials advance; or, with `method`, a TPE search on Optuna that prunes "
        "losing trials and that any number of workers share); finished trials are skipped on a rerun, and "
        "leaderboard.md/.json is rewritten after every trial. The file's format: minitune/experiments/sweep.py "
        "and configs/goemotions-loss-sweep.toml; a search's: minitune/experiments/search.py and "
        "configs/semeval-minilm-search.toml.",
    )
    p.add_argument("file", help="the sweep's TOML file")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output folder that holds another sweep (or one with other settings); a search: "
        "delete its study from the storage too",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="a search (method = \"tpe\"): the study's storage, instead of the file's: a database URL "
        "(sqlite:///study.db, postgresql://...) or a journal file; workers given the same one share the study",
    )
    return p


def run_sweep_command(argv: list[str]) -> list[dict]:
    args = sweep_parser().parse_args(argv)
    plan = read_plan(args.file, args.storage)
    if isinstance(plan, Search):
        rows = run_search(plan, run_train, overwrite=args.overwrite)
        print(f"leaderboard of the study's {len(rows)} trials: {plan.output_dir / 'leaderboard.md'}")
        return rows
    rows = run_sweep(plan, run_train, overwrite=args.overwrite)
    print(f"leaderboard of {len(rows)} trials: {plan.output_dir / 'leaderboard.md'}")
    return rows


def compare_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune compare",
        allow_abbrev=False,
        description="One table of finished runs (task, model, parameters, dev/out-of-fold/test scores, thresholds, "
        "training time), sorted by each task's metric; printed and written as Markdown and JSON.",
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="output directories of finished runs; a sweep's or a search's folder stands for its finished trials",
    )
    p.add_argument("--output", default="comparison", help="writes OUTPUT.md and OUTPUT.json (default: comparison)")
    return p


def run_compare(argv: list[str]) -> list[dict]:
    args = compare_parser().parse_args(argv)
    rows = compare([Path(d) for d in args.run_dirs])
    md, js = write_comparison(rows, Path(args.output))
    print(markdown_table(rows) + f"wrote {md} and {js}")
    return rows
