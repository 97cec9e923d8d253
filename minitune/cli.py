"""The command line: `minitune` (the console script) and `python run.py` are this module's `main`.

    minitune --task humor --model xlm-roberta-large            # train (the default command)
    minitune train --task semeval --model minilm --epochs 3    # the same, named
    minitune predict --model runs/humor-minilm/model --input texts.csv --output preds.csv
    minitune predict --model smollm2 --head generative --task semeval --input tweets.csv --output preds.csv
    minitune predict --model runs/recipe-mpr-minilm --input questions.jsonl --output answers.csv
    minitune explain --model runs/humor-minilm --input texts.csv --output tokens.jsonl  # integrated gradients
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
from minitune.commands import (
    compare_parser,
    explain_parser,
    export_parser,
    predict_parser,
    report_parser,
    run_compare,
    run_explain,
    run_export,
    run_predict,
    run_report,
    run_sweep_command,
    sweep_parser,
)
from minitune.config.sections import RunConfig
from minitune.errors import ConfigError, MinituneError, did_you_mean
from minitune.experiments.distill import run_distill
from minitune.flags import add_setting, build_parser, flag_for, make_config, parse_config
from minitune.runner import run_train
from minitune.train.distributed import env_world_size, exit_process, is_main
from minitune.train.interrupt import TrainingInterrupted


def interrupted_message(cfg: RunConfig | None, command: str = "") -> str:
    """What an interruption left behind (checkpoints/rundir.py), or just that it happened before any run began."""
    if cfg is None:
        return "interrupted"
    return interruption_note(Path(cfg.outputs.output_dir), cfg.loop.checkpoint, command)


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


# Every command but training (the default): its function and its parser, whose flags errors are rendered with.
COMMANDS = {
    "predict": (run_predict, predict_parser),
    "explain": (run_explain, explain_parser),
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
