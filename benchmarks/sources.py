"""Issue 26: GoEmotions alone against GoEmotions + SemEval-2018 E-c mapped into its labels (the map that ships), on
dev macro-F1 at the fixed 0.3 threshold and at per-label thresholds tuned on dev, overall and on the labels SemEval
feeds, paired by seed; and GoEmotions in Ekman's taxonomy. Same settings for all (MiniLM, the GoEmotions defaults,
2 epochs).

    OMP_NUM_THREADS=1 python -m benchmarks.sources --data-dir ../shared/data --runs runs/sources \
        [--seeds 42 1] [--epochs 2] [--out benchmarks/results/sources.json]

Each run is trained once in RUNS/<name>-seed<S> (`minitune --task goemotions --model minilm --epochs E --seed S
...`, one thread) and read back when it has finished there already; the Ekman run uses the first seed only. The
table is printed and written as JSON, with the paired differences (with SemEval minus alone) per seed and their
mean. The GoEmotions-alone runs train on no extra source, so their score on the fed labels is taken from their
per-label F1 over the same labels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

RUNS = {"goemotions": [], "goemotions+semeval": ["--add-train", "semeval"], "goemotions-ekman": ["--taxonomy", "ekman"]}
SCORES = ("fixed_macro_f1", "tuned_macro_f1", "fixed_fed_macro_f1", "tuned_fed_macro_f1", "fixed_other_macro_f1",
          "tuned_other_macro_f1")  # fmt: skip


def train(name: str, seed: int, runs: Path, data_dir: Path, epochs: int) -> dict:
    """The run's results.json, training it first unless it finished already."""
    out = runs / f"{name}-seed{seed}"
    if not (out / "results.json").is_file():
        cmd = [sys.executable, "-m", "minitune", "--task", "goemotions", "--model", "minilm", "--epochs", str(epochs)]
        cmd += ["--seed", str(seed), "--data-dir", str(data_dir), "--output-dir", str(out), *RUNS[name]]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    return json.loads((out / "results.json").read_text())


def macro(report: dict, labels: list[str]) -> float:
    return float(np.mean([report["per_class"][n]["f1"] for n in labels]))


def row(results: dict, fed: list[str]) -> dict:
    """Dev macro-F1 overall and over the fed labels (and the others), fixed and tuned, with the run's time."""
    dev = results["dev"]
    out = {"fixed_macro_f1": dev["macro_f1"], "tuned_macro_f1": dev["tuned"]["macro_f1"]}
    if fed:
        others = [n for n in dev["label_names"] if n not in fed]
        out |= {"fixed_fed_macro_f1": macro(dev, fed), "tuned_fed_macro_f1": macro(dev["tuned"], fed)}
        out |= {"fixed_other_macro_f1": macro(dev, others), "tuned_other_macro_f1": macro(dev["tuned"], others)}
        out["fed_f1"] = {
            n: {"fixed": round(dev["per_class"][n]["f1"], 4), "tuned": round(dev["tuned"]["per_class"][n]["f1"], 4)}
            for n in fed
        }
    sources = (results.get("sources") or {}).get("sources")
    out |= {"best_epoch": results["train"]["best_epoch"], "seconds": results["train"]["wall_seconds"]}
    out["examples_per_epoch"] = sum(s["trained_on"] for s in sources) if sources else None
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def paired(alone: list[dict], merged: list[dict]) -> dict:
    """With SemEval minus alone, per seed, and the mean and spread (sample std) of those differences."""
    diffs = {k: [round(m[k] - a[k], 4) for a, m in zip(alone, merged)] for k in SCORES}
    std = lambda v: round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else None  # noqa: E731
    return {k: {"per_seed": v, "mean": round(float(np.mean(v)), 4), "std": std(v)} for k, v in diffs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/sources"))
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    got = {(name, s): train(name, s, a.runs, a.data_dir, a.epochs) for s in a.seeds for name in RUNS if
           name != "goemotions-ekman" or s == a.seeds[0]}  # fmt: skip
    fed = got[("goemotions+semeval", a.seeds[0])]["sources"]["fed_labels"]
    table = {f"{name} seed {s}": row(r, fed if name != "goemotions-ekman" else []) for (name, s), r in got.items()}
    for name, r in table.items():
        print(f"{name:30s} " + "  ".join(f"{k} {v}" for k, v in r.items() if k != "fed_f1"))
    alone = [table[f"goemotions seed {s}"] for s in a.seeds]
    merged = [table[f"goemotions+semeval seed {s}"] for s in a.seeds]
    diff = paired(alone, merged)
    for k, v in diff.items():
        print(f"with semeval - alone, {k:22s} {v['per_seed']}  mean {v['mean']:+.4f}  std {v['std']}")
    sources = got[("goemotions+semeval", a.seeds[0])]["sources"]["sources"]
    record = {"fed_labels": fed, "epochs": a.epochs, "seeds": a.seeds, "runs": table, "paired": diff}
    if a.out:
        a.out.write_text(json.dumps(record | {"sources": sources}, indent=2) + "\n")


if __name__ == "__main__":
    main()
