"""The command line: `minitune` (the console script) and `python run.py` are this module's `main`.

    minitune --task humor --model xlm-roberta-large            # train (the default command)
    minitune train --task semeval --model minilm --epochs 3    # the same, named
    minitune predict --model runs/humor-minilm/model --input texts.csv --output preds.csv
    minitune predict --model smollm2 --head generative --task semeval --input tweets.csv --output preds.csv
    minitune predict --model runs/recipe-mpr-minilm --input questions.jsonl --output answers.csv
    minitune report runs/humor-minilm                          # redraw figures/ and report.html, no model
    minitune export --model runs/humor-minilm/model --format onnx --output model.onnx

`minitune --help` lists every training flag; `minitune predict --help` the prediction flags. Errors a user can
cause end in one line on stderr and exit code 2, with library parameters renamed to the flags that set them;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from minitune.checkpoints.rundir import interruption_note
from minitune.checkpoints.runlock import require_finished
from minitune.config.load import COMMAND_ONLY, choices_of, field_type, flag, make_config
from minitune.config.sections import FLAT, GenerativeSettings, RunConfig, setting_field
from minitune.errors import ConfigError, MinituneError, did_you_mean
from minitune.eval.html import write_html_report
from minitune.experiments.compare import compare, markdown_table, write_comparison
from minitune.experiments.distill import run_distill
from minitune.experiments.sweep import read_sweep, run_sweep
from minitune.export import export_onnx
from minitune.predict import predict_file
from minitune.predict_generative import PlainAsk
from minitune.runner import run_train
from minitune.train.distributed import env_world_size, exit_process, is_main
from minitune.train.interrupt import TrainingInterrupted


def _help(name: str) -> str:
    """The flag's help with its choices and its default, each said once."""
    f = setting_field(name)
    text = f.metadata["help"]
    if choices_of(name) and name != "task":
        text += f" (one of: {', '.join(choices_of(name))})"
    if f.default not in (None, False) and "default" not in text:
        text += f" (default: {f.default})"
    return text


def add_setting(p, name: str, **kw) -> None:
    """The flag of setting `name`, typed as the setting (a bool as --x / --no-x, a tuple as several values)."""
    typ = field_type(name)
    kw = dict(help=_help(name), dest=name) | kw
    if typ is bool:
        p.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kw)
    elif typ is tuple:  # --seeds 42 123 456, --teacher DIR DIR
        element = int if name == "seeds" else str
        p.add_argument(flag(name), type=element, nargs="+", metavar="N" if element is int else "DIR", **kw)
    else:
        p.add_argument(flag(name), type=typ, metavar=name.upper(), **kw)


def add_settings(p, names) -> None:
    """One argument group per section (--help lists the settings as the config holds them); flags stay flat."""
    groups = {}
    for name in names:
        section = ".".join(FLAT[name][:1]) or "run"
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} settings" if section != "run" else "run settings")
        # SUPPRESS keeps unset flags out of the namespace, so task defaults and the TOML file can fill them.
        add_setting(groups[section], name, default=argparse.SUPPRESS)


COMMANDS_HELP = """commands:
  minitune [train] --task T ...      fine-tune a model (the default command; its flags are below)
  minitune predict --model DIR ...   label a file with a trained model (minitune predict --help)
  minitune report RUN_DIR            redraw a run's figures and report.html (no model needed)
  minitune export --model DIR ...    export a trained classifier to ONNX (minitune export --help)
  minitune cv --task T --folds K ... k-fold cross-validation with out-of-fold predictions (training flags)
  minitune sweep FILE.toml           a multi-phase search with a leaderboard (minitune sweep --help)
  minitune distill --teacher DIR ... train a student on a teacher's probabilities (minitune distill --help)
  minitune compare RUN_DIR ...       one table of finished runs, sorted by the task's metric
  --seeds 42 123 456 on train or cv: one model per seed and their ensemble"""


class CommandParser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage: the CLI prints one line and a pointer to --help."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            flags = [o for a in self._actions for o in a.option_strings]
            message += did_you_mean(message.split()[2], flags)
        raise ConfigError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune",
        usage="minitune [train] --task TASK [options]",
        description="Fine-tune a pretrained transformer on a text classification task.\nDefaults shown are the "
        "general ones; each task's own defaults (TASK_DEFAULTS in minitune/config.py)\napply first.",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--config", help="TOML file setting any of the keys below, flat or in [section] tables (flags win)")
    add_settings(p, [name for name in FLAT if name not in COMMAND_ONLY])
    return p


def parse_config(argv: list[str] | None = None) -> RunConfig:
    args = vars(build_parser().parse_args(argv))
    return make_config(**args)


def flag_for(param: str, flags: set[str] | None = None) -> str:
    """The command-line flag that sets a library parameter (library parameters carry the flag's name, underscored);
    the parameter's own name when no flag sets it. `flags`: the command's option names (default: the settings)."""
    known = flags if flags is not None else set(FLAT) | {"config"}
    return flag(param) if param in known else param


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
    add_ask_flags(p)
    return p


ASK_SETTINGS = (
    "answer_mode",
    "shots",
    "prompt_template",
    "max_new_tokens",
)  # the generative section, as train takes it


def add_ask_flags(p: argparse.ArgumentParser) -> None:
    """`predict --head generative`: ask a plain instruct checkpoint (experiments/generative_predict.py)."""
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
    if args.shots < 0 or args.max_new_tokens < 1:
        raise ConfigError("--shots must be >= 0 and --max-new-tokens positive")
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
    )
    print(f"wrote {n} predictions to {path}")
    return path


def interrupted_message(cfg: RunConfig | None, command: str = "") -> str:
    """What an interruption left behind (checkpoints/rundir.py), or just that it happened before any run began."""
    if cfg is None:
        return "interrupted"
    return interruption_note(Path(cfg.outputs.output_dir), cfg.loop.checkpoint, command)


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


def output_file(path: str) -> None:
    """An output that is to be a file must not name an existing folder."""
    if Path(path).is_dir():
        raise ConfigError(f"--output {path} is a folder: give the file to write, e.g. {Path(path) / 'out.csv'}")


def run_report(argv: list[str]) -> Path:
    run_dir = Path(report_parser().parse_args(argv).run_dir)
    require_finished(run_dir, "run_dir")
    path = write_html_report(run_dir)
    print(f"wrote {path} and {path.parent / 'figures'}/")
    return path


def run_export(argv: list[str]) -> Path:
    args = export_parser().parse_args(argv)
    output_file(args.output)
    path = export_onnx(Path(args.model), Path(args.output), opset=args.opset)
    print(f"wrote {path}")
    return path


def training_parser(prog: str, usage: str, description: str) -> argparse.ArgumentParser:
    """The training flags under another command's name (cv, distill)."""
    p = build_parser()
    p.prog, p.usage, p.description = prog, usage, description
    return p


def cv_parser() -> argparse.ArgumentParser:
    return training_parser(
        "minitune cv",
        "minitune cv --task TASK --folds K [training options]",
        "k-fold cross-validation: one model per fold, out-of-fold predictions (oof.csv) for every training "
        "example,\nper-fold and mean ± std scores, thresholds tuned on the out-of-fold predictions, and the fold "
        "models'\nmean probabilities on dev and --test-file. --resume continues in the fold that was stopped.",
    )


def cv_config(argv: list[str]) -> RunConfig:
    return make_config(command="cv", **vars(cv_parser().parse_args(argv)))


def run_cv_command(argv: list[str]) -> dict:
    return run_train(cv_config(argv))


def distill_parser() -> argparse.ArgumentParser:
    p = training_parser(
        "minitune distill",
        "minitune distill --teacher DIR [DIR ...] --task TASK --model STUDENT [...]",
        "Train a student on a teacher's probabilities (a run, --seeds or cv directory) plus the gold labels, and "
        "report it beside\nthe teacher and the same student trained alone, with the predict-time speed ratio.",
    )
    g = p.add_argument_group("distill settings")
    add_setting(g, "teacher", default=argparse.SUPPRESS, help="teacher run, ensemble or cv directories (required)")
    for name in ("distill_alpha", "temperature", "alone"):
        add_setting(g, name, default=argparse.SUPPRESS)
    return p


def distill_config(argv: list[str]) -> RunConfig:
    """The student's run config, with its teacher and the distillation settings."""
    return make_config(command="distill", **vars(distill_parser().parse_args(argv)))


def run_distill_command(argv: list[str]) -> dict:
    return run_distill(distill_config(argv), run_train)


def sweep_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune sweep",
        allow_abbrev=False,
        description="Train the trials of a sweep file (a base config, a list or grid of variations, phases with "
        "their own budgets and how many trials advance); finished trials are skipped on a rerun, and "
        "leaderboard.md/.json is rewritten after every trial. The file's format: minitune/experiments/sweep.py "
        "and configs/goemotions-loss-sweep.toml.",
    )
    p.add_argument("file", help="the sweep's TOML file")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output folder that holds another sweep (or one with other settings)",
    )
    return p


def run_sweep_command(argv: list[str]) -> list[dict]:
    args = sweep_parser().parse_args(argv)
    sweep = read_sweep(args.file)
    rows = run_sweep(sweep, run_train, overwrite=args.overwrite)
    print(f"leaderboard of {len(rows)} trials: {sweep.output_dir / 'leaderboard.md'}")
    return rows


def compare_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="minitune compare",
        allow_abbrev=False,
        description="One table of finished runs (task, model, parameters, dev/out-of-fold/test scores, thresholds, "
        "training time), sorted by each task's metric; printed and written as Markdown and JSON.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output directories of finished runs")
    p.add_argument("--output", default="comparison", help="writes OUTPUT.md and OUTPUT.json (default: comparison)")
    return p


def run_compare(argv: list[str]) -> list[dict]:
    args = compare_parser().parse_args(argv)
    rows = compare([Path(d) for d in args.run_dirs])
    md, js = write_comparison(rows, Path(args.output))
    print(markdown_table(rows) + f"wrote {md} and {js}")
    return rows


# Every command but training (the default): its function and its parser, whose flags errors are rendered with.
COMMANDS = {
    "predict": (run_predict, predict_parser),
    "report": (run_report, report_parser),
    "export": (run_export, export_parser),
    "cv": (run_cv_command, cv_parser),
    "distill": (run_distill_command, distill_parser),
    "sweep": (run_sweep_command, sweep_parser),
    "compare": (run_compare, compare_parser),
}
# The commands that train, and how to read their run's config (for the message when they are interrupted).
TRAINING_CONFIGS = {"cv": cv_config, "distill": distill_config}


def main(argv: list[str] | None = None) -> int:
    """The exit code of the command in `argv` (default: the process's arguments). A torchrun process ends here,
    without interpreter finalization (train/distributed.exit_process says why)."""
    code = _main(list(sys.argv[1:] if argv is None else argv))
    if argv is None and env_world_size() > 1:
        exit_process(code)
    return code


def check_command_name(argv: list[str]) -> None:
    """A first word that is not a flag must be a command: a typo (`minitune predcit`) gets a suggestion."""
    if argv and not argv[0].startswith("-") and argv[0] != "train":
        known = ["train", *COMMANDS]
        raise ConfigError(
            f"unknown command {argv[0]!r}{did_you_mean(argv[0], known)}; commands: {', '.join(known)} "
            "(see minitune --help)"
        )


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    command = COMMANDS.get(argv[0]) if argv else None
    cfg = None
    try:
        if command is not None:
            command[0](argv[1:])
        else:
            check_command_name(argv)
            cfg = parse_config(argv[1:] if argv and argv[0] == "train" else argv)
            if cfg.command == "distill":  # `minitune --resume DIR` continues a run of any command
                run_distill(cfg, run_train)
            else:
                run_train(cfg)
    except MinituneError as e:
        flags = {a.dest for a in command[1]()._actions} if command else None
        if is_main():  # under torchrun every rank finds the same error; one prints it
            print(f"error: {e.render(lambda param: flag_for(param, flags))}", file=sys.stderr)
        return 2
    except (TrainingInterrupted, KeyboardInterrupt):
        name = argv[0] if argv and argv[0] in TRAINING_CONFIGS else ""
        if cfg is None and name:
            cfg = TRAINING_CONFIGS[name](argv[1:])
        if is_main():
            print(interrupted_message(cfg, name), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
