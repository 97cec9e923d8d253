"""Test accuracy of every epoch of a Recipe-MPR bi-encoder run, fold by fold: a diagnostic of epoch selection.

Each fold selects its epoch on 40 held-out training items; this scores every kept epoch checkpoint on the fold's
100 test items instead, to show what the selection costs. It never feeds back into training (a model chosen on
test would be a test-set result). The run must keep one checkpoint per epoch:

    minitune --task recipe-mpr --model minilm --keep-checkpoints 6 --output-dir runs/mpr
    OMP_NUM_THREADS=1 python -m benchmarks.recipe_mpr_epochs runs/mpr --data-dir ../shared/data

Writes per_epoch_test.json into the run directory and prints each fold's (step, accuracy) and the mean by epoch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from minitune.checkpoints.load import load_model, load_tokenizer
from minitune.data.batching import make_collate
from minitune.data.features import tokenize
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.data.tasks import label_array, load_task
from minitune.eval.scoring import predict_scores


def fold_epochs(fold_dir: Path, test, gold, model, tokenizer, max_length: int) -> list[tuple[int, float]]:
    """(step, test accuracy) of each checkpoint kept in fold_dir, oldest first."""
    features = tokenize(test, tokenizer, MULTIPLE_CHOICE, max_length, bi=model.choice_scorer == "bi")
    collate = make_collate("dynamic", max_length, tokenizer.pad_token_id)
    kept = [
        ck for ck in [*fold_dir.glob("checkpoint-step*"), fold_dir / "checkpoint"] if (ck / "progress.json").is_file()
    ]
    if len(kept) < 2:
        raise SystemExit(
            f"{fold_dir}: {len(kept)} checkpoint(s) kept; train with --keep-checkpoints 6 to keep one per epoch"
        )
    found = {json.loads((ck / "progress.json").read_text())["step"]: ck for ck in kept}
    accuracies = []
    for step in sorted(found):
        model.load_state_dict(load_file(str(found[step] / "model.safetensors")))
        scores = predict_scores(model.eval(), features, collate, MULTIPLE_CHOICE, 32, torch.device("cpu"))
        accuracies.append((step, round(float((scores.argmax(1) == gold).mean()), 4)))
    return accuracies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=None)
    args = p.parse_args()
    config = json.loads((args.run_dir / "config.json").read_text())
    task = load_task("recipe-mpr", args.data_dir, seed=config["seed"])
    tokenizer = load_tokenizer(config["model"])
    model = load_model(config["model"], head="multiple_choice", choice_scorer=config["choice_scorer"])
    per_fold = {}
    for k, (_, _, test_ids) in enumerate(task.folds):
        fold_dir = args.run_dir / f"fold{k}"
        if not (fold_dir / "fold_scores.npz").is_file():
            break
        test = [task.train[i] for i in test_ids]
        per_fold[k] = fold_epochs(fold_dir, test, label_array(task, test), model, tokenizer, config["max_length"])
        print(f"fold {k}: {per_fold[k]}", flush=True)
    n = min(len(v) for v in per_fold.values())
    mean = [round(float(np.mean([v[e][1] for v in per_fold.values()])), 4) for e in range(n)]
    print(f"mean test accuracy by kept checkpoint: {mean}")
    (args.run_dir / "per_epoch_test.json").write_text(json.dumps({"folds": per_fold, "mean": mean}, indent=1) + "\n")


if __name__ == "__main__":
    main()
