#!/usr/bin/env python
"""minitune command line.

    python run.py --task humor --model xlm-roberta-large            # train (the default command)
    python run.py train --task semeval --model minilm --epochs 3    # the same, named
    python run.py predict --model runs/humor-minilm/model --input texts.csv --output preds.csv

`python run.py --help` lists every training flag; `python run.py predict --help` the prediction flags.
Errors a user can cause end in one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from minitune.errors import MinituneError

    try:
        if argv and argv[0] == "predict":
            from minitune.predict import run_predict

            run_predict(argv[1:])
        else:
            from minitune.config import parse_config
            from minitune.runner import run_train

            run_train(parse_config(argv[1:] if argv and argv[0] == "train" else argv))
    except MinituneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        training = not (argv and argv[0] == "predict")
        print("interrupted" + (": the last checkpoint is kept; continue with --resume OUTPUT_DIR" if training
                               else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
