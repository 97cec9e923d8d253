"""Issue 15: one model's dev score at thresholds tuned on dev (optimistic: tuned and scored on the same examples)
against thresholds tuned on a cv run's out-of-fold predictions (honest: tuned on examples no model trained on).

    python -m benchmarks.oof_thresholds RUN_DIR CV_DIR [--out benchmarks/results/oof_thresholds.json]

RUN_DIR is a multi-label training run (its scores.npz and predictions_dev.jsonl), CV_DIR a `minitune cv` run of the
same task and settings (its thresholds.json); the cv run's own dev score (its fold models' mean) is printed too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from minitune.data.kinds import MULTI_LABEL
from minitune.eval.metrics import classification_report
from minitune.eval.predictions import read_prediction_records


def dev_probs(run_dir: Path) -> np.ndarray:
    with np.load(run_dir / "scores.npz") as s:
        return s["dev"]


def dev_scores(gold: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, names: list[str]) -> dict:
    rep = classification_report(MULTI_LABEL, gold, probs, names, tuned_thresholds=thresholds)["tuned"]
    return {k: round(float(rep[k]), 4) for k in ("jaccard", "macro_f1", "micro_f1")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("cv_dir", type=Path)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    on_dev = json.loads((a.run_dir / "model" / "thresholds.json").read_text())
    on_oof = json.loads((a.cv_dir / "thresholds.json").read_text())
    names = list(on_dev["per_label"])
    gold = np.array([r["gold"] for r in read_prediction_records(a.run_dir, "dev")])  # the same dev examples
    single, folds = dev_probs(a.run_dir), dev_probs(a.cv_dir)
    fixed = np.full(len(names), on_dev["threshold"])
    tuned_dev = np.array(list(on_dev["per_label"].values()))
    tuned_oof = np.array([on_oof["per_label"][n] for n in names])
    rows = {
        "single model, fixed threshold": dev_scores(gold, single, fixed, names),
        "single model, tuned on dev (optimistic)": dev_scores(gold, single, tuned_dev, names),
        "single model, tuned on cv OOF (honest)": dev_scores(gold, single, tuned_oof, names),
        "cv fold ensemble, fixed threshold": dev_scores(gold, folds, fixed, names),
        "cv fold ensemble, tuned on OOF": dev_scores(gold, folds, tuned_oof, names),
    }
    for name, row in rows.items():
        print(f"{name:42s} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    if a.out:
        a.out.write_text(json.dumps({"run": str(a.run_dir), "cv": str(a.cv_dir), "dev": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
