"""One process of a torch.distributed test run (tests/test_distributed.py starts it, with or without RANK and
WORLD_SIZE in its environment): a tiny BERT without dropout trained by the real loop on the real samplers, so a
single process and two gloo processes must end with the same weights.

    python tests/dist_worker.py '{"model": DIR, "out": DIR, "sampler": "bucketed", ...}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import minitune
from minitune.adapters.lora import apply_adapters
from minitune.config.sections import AdapterSettings, AdversarySettings, DistributedSettings, LoopSettings
from minitune.data.batching import (
    BucketedBatchSampler,
    RandomBatchSampler,
    TokenBudgetBatchSampler,
    collate,
    length_of,
)
from minitune.eval.scoring import predict_scores
from minitune.train import distributed
from minitune.train.loop import TrainData, fit
from minitune.train.losses import build_loss
from minitune.train.parallel import full_trainable_state, is_sharded


def features(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 40, (1,), generator=g))
        ids = [2] + torch.randint(5, 90, (length,), generator=g).tolist() + [3]
        out.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "label": i % 3})
    return out


def sampler(kind: str, lengths: list[int]):
    if kind == "random":
        return RandomBatchSampler(lengths, 5, seed=1)
    if kind == "bucketed":
        return BucketedBatchSampler(lengths, 5, seed=1, window=2)
    return TokenBudgetBatchSampler(lengths, 60, seed=1, window=2)


def main(args: dict) -> None:
    device = distributed.setup(torch.device("cpu"), args.get("timeout", 60)).device
    torch.manual_seed(0)
    model = minitune.load_model(args["model"], num_labels=3)
    if args.get("lora"):
        apply_adapters(model, AdapterSettings(lora_r=4, lora_alpha=8.0, lora_dropout=0.0))
    for m in model.modules():
        if hasattr(m, "gradient_checkpointing"):
            m.gradient_checkpointing = bool(args.get("grad_checkpointing"))
    train, dev = features(args.get("n", 23)), features(11, seed=1)
    lengths = [length_of(f) for f in train]
    data = TrainData(train, distributed.shard_sampler(sampler(args["sampler"], lengths)), lambda b: collate(b, 0))
    evals = {"n": 0}

    def evaluate(m) -> dict:
        evals["n"] += 1
        if evals["n"] == args.get("crash_at_eval"):
            raise RuntimeError("crash injected by the test")
        scores = distributed.gathered_scores(
            lambda f: predict_scores(m, f, lambda b: collate(b, 0), "single_label", 4, device), dev, is_sharded(m)
        )
        if args.get("progress"):
            Path(args["out"], f"progress{distributed.rank()}").write_text(str(evals["n"]))
        return {"score": float(scores[:, 0].mean())}, None

    cfg = LoopSettings(
        metric="score",
        epochs=args.get("epochs", 2),
        grad_accum=2,
        lr=1e-3,
        llrd=0.9,
        warmup_ratio=0.1,
        eval_every=args.get("eval_every"),
        log_every=1,
        precision="fp32",  # as set: a subprocess would otherwise choose for its machine (auto)
        adversary=AdversarySettings(adversarial=args.get("adversarial")),
    )
    run = dict(resume=bool(args.get("resume")), signature=distributed.world_signature({}))
    run["distributed"] = DistributedSettings(fsdp=args.get("fsdp"))
    fit(model, build_loss("ce", "single_label", 3), data, evaluate, cfg, Path(args["out"]), device, **run)
    state = full_trainable_state(model)  # FSDP: whole on rank 0 only
    if distributed.is_main() or not is_sharded(model):
        save_file(state, str(Path(args["out"]) / f"final{distributed.rank()}.safetensors"))
    distributed.teardown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
    if distributed.env_world_size() > 1:
        distributed.exit_process(0)  # as minitune's CLI ends a torchrun process
