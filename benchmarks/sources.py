"""Issue 26: GoEmotions alone against GoEmotions + SemEval-2018 E-c mapped into its labels (the map that ships), on
dev macro-F1 at the fixed 0.3 threshold and at per-label thresholds tuned on dev, overall and on the labels SemEval
feeds; and GoEmotions in Ekman's taxonomy. Same settings for all three (MiniLM, the GoEmotions defaults, 2 epochs).

    OMP_NUM_THREADS=1 python -m benchmarks.sources --data-dir ../shared/data --runs runs/sources \
        [--epochs 2] [--out benchmarks/results/sources.json]

Each run is trained once in RUNS/<name> (`minitune --task goemotions --model minilm --epochs E ...`, one thread) and
read back when it has finished there already; the table is printed and written as JSON. The GoEmotions-alone run
trains on no extra source, so its score on the fed labels is taken from its per-label F1 over the same labels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

RUNS = {
    "goemotions": [],
    "goemotions + semeval": ["--add-train", "semeval"],
    "goemotions, ekman": ["--taxonomy", "ekman"],
}


def train(name: str, out: Path, data_dir: Path, epochs: int) -> dict:
    """The run's results.json, training it first unless it finished already."""
    if not (out / "results.json").is_file():
        cmd = [sys.executable, "-m", "minitune", "--task", "goemotions", "--model", "minilm", "--epochs", str(epochs)]
        cmd += ["--data-dir", str(data_dir), "--output-dir", str(out), *RUNS[name]]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    return json.loads((out / "results.json").read_text())


def macro(report: dict, labels: list[str]) -> float:
    return float(np.mean([report["per_class"][n]["f1"] for n in labels]))


def row(results: dict, fed: list[str]) -> dict:
    """Dev macro-F1 overall and over the fed labels, fixed and tuned, with the run's time and best epoch."""
    dev = results["dev"]
    out = {"fixed_macro_f1": dev["macro_f1"], "tuned_macro_f1": dev["tuned"]["macro_f1"]}
    if fed and all(n in dev["per_class"] for n in fed):
        out |= {"fixed_fed_macro_f1": macro(dev, fed), "tuned_fed_macro_f1": macro(dev["tuned"], fed)}
        others = [n for n in dev["label_names"] if n not in fed]
        out |= {"fixed_other_macro_f1": macro(dev, others), "tuned_other_macro_f1": macro(dev["tuned"], others)}
    train = results["train"]
    sources = (results.get("sources") or {}).get("sources")
    out |= {"best_epoch": train["best_epoch"], "seconds": train["wall_seconds"]}
    out |= {"examples_per_epoch": sum(s["trained_on"] for s in sources) if sources else None}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/sources"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    results = {name: train(name, a.runs / name.replace(" + ", "+").replace(", ", "-"), a.data_dir, a.epochs)
               for name in RUNS}  # fmt: skip
    fed = results["goemotions + semeval"]["sources"]["fed_labels"]
    table = {name: row(r, fed if name != "goemotions, ekman" else []) for name, r in results.items()}
    table["goemotions + semeval"]["sources"] = results["goemotions + semeval"]["sources"]["sources"]
    for name, r in table.items():
        print(f"{name:22s} " + "  ".join(f"{k} {v}" for k, v in r.items() if k != "sources"))
    if a.out:
        a.out.write_text(json.dumps({"fed_labels": fed, "epochs": a.epochs, "runs": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
