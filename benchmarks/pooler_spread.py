"""How much the classification head's input varies between texts, for a checkpoint: [CLS], pooler, mean pooling.

    python -m benchmarks.pooler_spread [--model minilm] [--task goemotions] [--n 300]

BERT's sequence-classification head (transformers' and minitune's alike) reads the pooler: tanh(W h_[CLS] + b).
A checkpoint trained for mean pooling (sentence-transformers' all-MiniLM-L6-v2) never trained that path, and
if its output hardly changes from text to text, a freshly initialised head starts from an almost constant input
and labels stay at their prior until the encoder has moved. This prints, over the first N training texts of a
task, the mean over dimensions of the per-dimension standard deviation and the mean pairwise cosine similarity
of each candidate input. Writes benchmarks/results/pooler_spread.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common


def spread(x: torch.Tensor) -> dict[str, float]:
    unit = torch.nn.functional.normalize(x, dim=-1)
    sim = unit @ unit.T
    off = sim[~torch.eye(len(x), dtype=torch.bool)]
    return {
        "std_per_dim": float(x.std(0).mean()),
        "mean_cosine": float(off.mean()),
        "mean_norm": float(x.norm(dim=-1).mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="goemotions")
    p.add_argument("--n", type=int, default=300, help="training texts to encode")
    p.add_argument("--data-dir", type=Path, default=common.REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "pooler_spread.json")
    args = p.parse_args(argv)
    from transformers import AutoModel

    import minitune
    from minitune.checkpoints.hub import resolve_model
    from minitune.data.batching import collate
    from minitune.data.features import tokenize
    from minitune.data.tasks import load_task

    task = load_task(args.task, args.data_dir)
    tokenizer = minitune.load_tokenizer(args.model)
    batch = collate(tokenize(task.train[: args.n], tokenizer, task.kind, 128), tokenizer.pad_token_id)
    model = AutoModel.from_pretrained(resolve_model(args.model)).eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    mask = batch["attention_mask"].unsqueeze(-1).float()
    candidates = {
        "cls": out.last_hidden_state[:, 0],
        "pooler": out.pooler_output,
        "mean_pooled": (out.last_hidden_state * mask).sum(1) / mask.sum(1),
    }
    report = {
        "model": args.model,
        "task": args.task,
        "n": len(batch["input_ids"]),
        **{name: spread(x) for name, x in candidates.items()},
    }
    for name in candidates:
        r = report[name]
        print(
            f"{name:12s} std per dim {r['std_per_dim']:.3f}  mean cosine {r['mean_cosine']:.3f}  "
            f"mean norm {r['mean_norm']:.2f}"
        )
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
