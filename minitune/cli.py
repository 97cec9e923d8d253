"""The command line: `minitune` (the console script) and `python run.py` are this module's `main`.

    minitune --task humor --model xlm-roberta-large            # train (the default command)
    minitune train --task semeval --model minilm --epochs 3    # the same, named
    minitune predict --model runs/humor-minilm/model --input texts.csv --output preds.csv

`minitune --help` lists every training flag; `minitune predict --help` the prediction flags. Errors a user can
cause end in one line on stderr and exit code 2, with library parameters renamed to the flags that set them;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from minitune.config import flag_for, parse_config
from minitune.errors import ConfigError, MinituneError
from minitune.predict import predict_file
from minitune.runner import run_train
from minitune.train.distributed import is_main


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minitune predict",
        description="Label a file with a trained model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a model directory written by a training run (its model/ folder)")
    p.add_argument("--input", required=True, help=".csv, .tsv or .jsonl file with the texts")
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--text-col", default="text", help="column holding the text")
    p.add_argument("--pair-col", default=None, help="column holding the second segment, if the model used one")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    p.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="multi-label: one threshold for every label "
        "(default: the tuned per-label thresholds saved with the model, else 0.5)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    return p


def run_predict(argv: list[str]) -> Path:
    args = predict_parser().parse_args(argv)
    if args.batch_size < 1 or args.max_length < 1:
        raise ConfigError("--batch-size and --max-length must be positive integers")
    path, n = predict_file(
        Path(args.model),
        Path(args.input),
        Path(args.output),
        text_col=args.text_col,
        pair_col=args.pair_col,
        batch_size=args.batch_size,
        max_length=args.max_length,
        threshold=args.threshold,
        device=args.device,
    )
    print(f"wrote {n} predictions to {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    predicting = bool(argv) and argv[0] == "predict"
    try:
        if predicting:
            run_predict(argv[1:])
        else:
            run_train(parse_config(argv[1:] if argv and argv[0] == "train" else argv))
    except MinituneError as e:
        flags = {a.dest for a in predict_parser()._actions} if predicting else None
        if is_main():  # under torchrun every rank finds the same error; one prints it
            print(f"error: {e.render(lambda param: flag_for(param, flags))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted" + ("" if predicting else ": the last checkpoint is kept; continue with --resume OUTPUT_DIR"),
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
