#!/usr/bin/env python
"""Micro-benchmarks of the parts of a CPU run that the end-to-end split points at, on MiniLM and real humor data.

    OMP_NUM_THREADS=1 python -m benchmarks.cpu_parts [--repeats 5] [--parts eval attention optimizer compile]

- eval: scoring the humor dev set (`predict_logits`): batch 16 (what a humor run uses: twice its micro-batch of
  8) against larger batches, under torch.no_grad against torch.inference_mode;
- attention: one MiniLM attention (12 heads, hidden 384) forward + backward over the packed tokens of real humor
  batches (8 and 32 sequences drawn at random): one SDPA call per sequence (today's CPU path), one masked call on
  the re-padded block, and masked calls over groups of similar lengths;
- optimizer: what one optimizer step costs beside the forward/backward it follows: clip_grad_norm_ (as the loop
  calls it) and the fused AdamW step, against one training step of a humor micro-batch;
- compile: torch.compile on the training step (dynamic shapes), first step (compile time) and later steps.
Each variant is timed `--repeats` times, interleaved, and the median is reported; ratios are within one run.
Results: benchmarks/results/cpu_parts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def humor(data_dir: str | None):
    from minitune import load_tokenizer
    from minitune.data.features import tokenize
    from minitune.data.tasks import load_task, resolve_data_dir

    task = load_task("humor", resolve_data_dir(data_dir), seed=42)
    tok = load_tokenizer("minilm")
    return task, tok, tokenize(task.train[:2000], tok, task.kind, 128), tokenize(task.dev, tok, task.kind, 128)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleave(variants: dict, repeats: int) -> dict:
    """Each variant once per round, rounds repeated; median seconds per variant."""
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k] += timed(fn, 1)
    return {
        k: {"median_s": round(statistics.median(v), 4), "all_s": [round(x, 4) for x in v]} for k, v in times.items()
    }


def part_eval(args, model, tok, dev_f) -> dict:
    from minitune.data.batching import make_collate
    from minitune.eval import scoring

    collate = make_collate("dynamic", 128, tok.pad_token_id)
    cpu = torch.device("cpu")
    variants = {}
    for bs in (16, 64, 256):
        variants[f"no_grad batch {bs}"] = lambda bs=bs: _score(scoring, model, dev_f, collate, bs, cpu, inference=False)
        variants[f"inference_mode batch {bs}"] = lambda bs=bs: _score(
            scoring, model, dev_f, collate, bs, cpu, inference=True
        )
    ref = _score(scoring, model, dev_f, collate, 16, cpu, inference=False)
    for bs in (64, 256):
        got = _score(scoring, model, dev_f, collate, bs, cpu, inference=True)
        assert abs(got - ref).max() < 1e-4, "larger eval batches changed the logits"
    return {"n_dev": len(dev_f), **interleave(variants, args.repeats)}


def _score(scoring, model, feats, collate, bs, device, inference: bool):
    ctx = torch.inference_mode() if inference else torch.no_grad()
    with ctx:
        return scoring.predict_logits(model, feats, collate, bs, device)


def part_attention(args, train_f) -> dict:
    from minitune.models.attention import Packing, packed_attention

    rng = random.Random(0)
    lengths = [len(f["input_ids"]) for f in train_f]
    out = {}
    for batch in (8, 32):
        masks = []
        for _ in range(8):
            ls = rng.sample(lengths, batch)
            masks.append((torch.arange(max(ls))[None] < torch.tensor(ls)[:, None]).long())
        variants = {}
        for name in ("per_sequence", "padded_block", "groups_of_4", "groups_of_8"):
            variants[name] = lambda name=name, masks=masks: [
                _attention_fb(name, m, Packing, packed_attention) for m in masks
            ]
        out[f"batch {batch}"] = interleave(variants, args.repeats)
    return out


def _attention_fb(name: str, mask: torch.Tensor, Packing, packed_attention) -> None:
    torch.manual_seed(0)
    n = int(mask.sum())
    q, k, v = (torch.randn(n, 12, 32, requires_grad=True) for _ in range(3))
    if name in ("per_sequence", "padded_block"):
        pack = Packing(mask, per_sequence=name == "per_sequence")
        y = packed_attention(q, k, v, pack, causal=False, dropout_p=0.0)
    else:
        y = _grouped(q, k, v, mask, int(name.rsplit("_", 1)[1]))
    y.sum().backward()


def _grouped(q, k, v, mask, group: int) -> torch.Tensor:
    """Prototype: sequences sorted by length, `group` at a time re-padded to the group's longest, one masked call."""
    lengths = mask.sum(1).tolist()
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    outs = [None] * len(lengths)
    for g in range(0, len(order), group):
        members = order[g : g + group]
        t = max(lengths[i] for i in members)

        def block(x, members=members, t=t):
            rows = [F.pad(x[starts[i] : starts[i + 1]], (0, 0, 0, 0, 0, t - lengths[i])) for i in members]
            return torch.stack(rows).transpose(1, 2)  # (G, h, t, D)

        keep = torch.stack([torch.arange(t) < lengths[i] for i in members])  # (G, t)
        y = F.scaled_dot_product_attention(block(q), block(k), block(v), attn_mask=keep[:, None, None, :])
        y = y.transpose(1, 2)  # (G, t, h, D)
        for j, i in enumerate(members):
            outs[i] = y[j, : lengths[i]]
    return torch.cat(outs)


def part_optimizer(args, model, tok, train_f) -> dict:
    from minitune.data.batching import make_collate
    from minitune.train.optim import build_optimizer

    collate = make_collate("dynamic", 128, tok.pad_token_id)
    rng = random.Random(0)
    batches = [collate(rng.sample(train_f, 8)) for _ in range(4)]
    opt = build_optimizer(model, 2e-5, llrd=0.95)
    params = [p for g in opt.param_groups for p in g["params"]]
    model.train()

    def fwd_bwd():
        for b in batches:  # one humor window: 4 micro-batches of 8
            logits = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
            F.cross_entropy(logits, b["labels"]).backward()

    fwd_bwd()
    opt.step()  # allocate the moments
    variants = {
        "forward+backward (4 x 8)": fwd_bwd,
        "clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
        "clip_grad_norm_ foreach": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True),
        "fused AdamW step": opt.step,
    }
    return {"parameters": sum(p.numel() for p in params), **interleave(variants, args.repeats)}


def part_compile(args, model, tok, train_f) -> dict:
    from minitune.data.batching import make_collate

    collate = make_collate("dynamic", 128, tok.pad_token_id)
    rng = random.Random(1)
    batches = [collate(rng.sample(train_f, 8)) for _ in range(args.compile_steps)]
    model.train()
    out = {}
    for name, m in (("eager", model), ("compiled", torch.compile(model, dynamic=True))):
        times = []
        for b in batches:
            t0 = time.perf_counter()
            F.cross_entropy(m(b["input_ids"], b["attention_mask"], b.get("token_type_ids")), b["labels"]).backward()
            times.append(time.perf_counter() - t0)
            print(f"compile part: {name} step {len(times)}: {times[-1]:.2f} s", flush=True)  # survives a timeout
        out[name] = {
            "first_s": round(times[0], 3),
            "rest_median_s": round(statistics.median(times[1:]), 4),
            "total_s": round(sum(times), 2),
        }
    return {"steps": args.compile_steps, **out}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["eval", "attention", "optimizer"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile-steps", type=int, default=20)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_parts.json")
    args = p.parse_args(argv)
    from minitune import load_model

    task, tok, train_f, dev_f = humor(args.data_dir)
    model = load_model("minilm", num_labels=2).eval()
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc["_meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.cpu_parts "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    for part in args.parts:
        if part == "eval":
            doc["eval"] = part_eval(args, model, tok, dev_f)
        elif part == "attention":
            doc["attention"] = part_attention(args, train_f)
        elif part == "optimizer":
            doc["optimizer"] = part_optimizer(args, model, tok, train_f)
        elif part == "compile":
            doc["compile"] = part_compile(args, model, tok, train_f)
        print(json.dumps({part: doc[part]}, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    main()
