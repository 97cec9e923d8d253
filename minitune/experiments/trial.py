"""One model trained on a train split and selected on a dev split: the unit every protocol repeats.

`build_model` loads the checkpoint (or builds the bag-of-embeddings baseline) with the run's head, adapters and
memory options; `train_once` tokenizes, builds the loss and the batches, runs the training loop and returns the
best weights' dev scores, so a holdout run, a fold of Recipe-MPR and (later) a cross-validation fold or an ensemble
member are the same call.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minitune.adapters.lora import apply_adapters
from minitune.checkpoints.load import choice_scorer_for, load_model
from minitune.config import RunConfig, resume_signature
from minitune.data.batching import length_of, make_collate, make_sampler
from minitune.data.features import oversample_rare, tokenize
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.tasks import Example, TaskData, label_array
from minitune.errors import ConfigError
from minitune.eval.metrics import SELECTION_METRICS
from minitune.eval.scoring import predict_logits, predict_scores, probabilities, task_report
from minitune.models.ffnn import build_ffnn
from minitune.train.distill_loss import DistillLoss, with_soft_targets
from minitune.train.distributed import gathered_scores, shard_sampler, world_signature
from minitune.train.loop import LoopConfig, TrainData, fit
from minitune.train.losses import task_loss
from minitune.train.parallel import is_sharded

log = logging.getLogger("minitune")


@dataclass
class Trial:
    """What train_once gives back: the model holding its best weights, the loop's summary, those weights' dev
    probabilities, and the collate function to score more features with."""

    model: nn.Module
    summary: dict
    dev_scores: np.ndarray
    collate: object


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loop_config(cfg: RunConfig) -> LoopConfig:
    """The training loop's settings, taken from the run's."""
    names = {f.name for f in dataclasses.fields(LoopConfig)} - {"resume", "signature", "evaluate_start"}
    signature = world_signature(resume_signature(cfg))  # distributed: with the world size
    return LoopConfig(**{n: getattr(cfg, n) for n in names}, resume=bool(cfg.resume), signature=signature)


def build_loss(cfg: RunConfig, task: TaskData, train_ex: list[Example]) -> nn.Module:
    """The run's loss; class weights come from the original training labels (before any oversampling)."""
    return task_loss(
        task.kind,
        task.num_labels,
        label_array(task, train_ex),
        cfg.loss or "",
        class_weights=cfg.class_weights,
        label_smoothing=cfg.label_smoothing,
        gamma=cfg.focal_gamma,
        gamma_neg=cfg.asl_gamma_neg,
        gamma_pos=cfg.asl_gamma_pos,
        clip=cfg.asl_clip,
    )


def bi_encoder(cfg: RunConfig, task: TaskData) -> bool:
    """Whether this run scores multiple choice with a bi-encoder (its features then hold each text alone)."""
    return (
        task.kind == MULTIPLE_CHOICE and cfg.model != "ffnn" and choice_scorer_for(cfg.model, cfg.choice_scorer) == "bi"
    )


def build_model(cfg: RunConfig, task: TaskData, tokenizer) -> nn.Module:
    if cfg.in_batch_negatives and not bi_encoder(cfg, task):
        raise ConfigError(
            f"`in_batch_negatives` trains a bi-encoder, and `model` {cfg.model} declares no sentence-embedding pooling "
            "(it would score options as a cross-encoder): add `choice_scorer` bi, or drop `in_batch_negatives`"
        )
    head = "multiple_choice" if task.kind == MULTIPLE_CHOICE else "sequence"
    num_labels = None if head == "multiple_choice" else task.num_labels
    if cfg.model == "ffnn":
        return build_ffnn(len(tokenizer), num_labels or 1, head, tokenizer.pad_token_id)
    model = load_model(
        cfg.model, num_labels, head, quantize=cfg.quantize, pooling=cfg.pooling, choice_scorer=cfg.choice_scorer
    )
    model.in_batch_negatives = cfg.in_batch_negatives
    if model.hf_config.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
        # Saved with the model so transformers, which pools at the last non-pad token, reads the same pad id.
        log.warning(
            "%s defines no pad token in its config: using the tokenizer's (id %d)", cfg.model, tokenizer.pad_token_id
        )
        model.hf_config["pad_token_id"] = tokenizer.pad_token_id
    if cfg.grad_checkpointing:
        for m in model.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = True
    if cfg.compile:  # in place: the module and its state_dict keys stay as they are (no `_orig_mod.` prefix)
        model.compile(dynamic=True)
    if cfg.lora_r:
        targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()] if cfg.lora_targets else None
        names, trainable, total = apply_adapters(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets)
        alpha = 2.0 * cfg.lora_r if cfg.lora_alpha is None else cfg.lora_alpha
        print(
            f"LoRA r={cfg.lora_r} alpha={alpha} on {len(names)} layers: {trainable:,} trainable of {total:,} "
            f"parameters ({100 * trainable / max(total, 1):.2f}%)"
        )
    return model


def score(
    cfg: RunConfig, task: TaskData, model: nn.Module, features: list[dict], collate_fn, device: torch.device
) -> np.ndarray:
    """Probabilities as a run evaluates: batches of twice the training batch (no activations kept for backward).
    Under torch.distributed each rank scores a shard (under FSDP all of it) and every rank gets all scores."""
    return gathered_scores(
        lambda f: predict_scores(model, f, collate_fn, task.kind, cfg.batch_size * 2, device, cfg.precision),
        features,
        every_rank=is_sharded(model),
    )


def train_once(
    cfg: RunConfig,
    task: TaskData,
    train_ex: list[Example],
    dev_ex: list[Example],
    tokenizer,
    out_dir: Path,
    device: torch.device,
    tokenized: dict | None = None,
    teacher=None,
) -> Trial:
    """Fine-tune one model on train_ex, selecting on dev_ex. `tokenized` (id(example) -> features) lets the folds
    of one run share a single tokenization. `teacher` (experiments/distill.Teacher): train on its probabilities
    too (train.losses.DistillLoss); dev is still scored with the task loss."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()

    def features(examples):
        if tokenized is not None:
            return [tokenized[id(ex)] for ex in examples]
        return tokenize(examples, tokenizer, task.kind, cfg.max_length, bi_encoder(cfg, task))

    train_f, dev_f = features(train_ex), features(dev_ex)
    if teacher is not None:  # before oversampling, which repeats features by index
        soft = teacher.targets_for(task, train_ex, device)
        train_f = [f | {"label": with_soft_targets(f["label"], p)} for f, p in zip(train_f, soft)]
    if cfg.oversample_rare and task.kind == MULTI_LABEL:
        train_f = [train_f[i] for i in oversample_rare(label_array(task, train_ex), cfg.oversample_rare, cfg.seed)]
    log.info("features for %d train / %d dev examples in %.1fs", len(train_f), len(dev_f), time.perf_counter() - t0)
    model = build_model(cfg, task, tokenizer).to(device)
    fresh_head = not getattr(model, "head_trained", False)  # its before-training score is chance level
    collate_fn = make_collate(cfg.padding, cfg.max_length, tokenizer.pad_token_id)
    loss_fn = build_loss(cfg, task, train_ex).to(device)
    best: dict = {}

    label_dtype = torch.float32 if task.kind == MULTI_LABEL else torch.long
    dev_labels = torch.as_tensor(label_array(task, dev_ex), dtype=label_dtype, device=device)

    # fit's first call in a fresh run scores the untrained model: reported as the start, never kept as the best
    before_training = [not cfg.resume and (cfg.epochs > 0 or bool(cfg.max_steps))]

    def evaluate(m) -> dict:
        logits = gathered_scores(  # distributed: each rank a shard, every rank all of them
            lambda f: predict_logits(m, f, collate_fn, cfg.batch_size * 2, device, cfg.precision, desc="eval"),
            dev_f,
            every_rank=is_sharded(m),
        )
        scores = probabilities(logits, task.kind)
        rep = task_report(task, dev_ex, scores, cfg.threshold)
        is_start = before_training.pop() if before_training else False  # reported as the start, never the best
        if not is_start and (
            not best or rep[cfg.metric] > best["value"]
        ):  # the loop keeps these weights: their scores too
            best.update(value=rep[cfg.metric], scores=scores)
        with torch.no_grad():
            loss = float(loss_fn(torch.as_tensor(logits, device=device), dev_labels))
        return {k: rep[k] for k in SELECTION_METRICS[task.kind] if k in rep} | {"loss": loss}

    train_loss = loss_fn
    if teacher is not None:
        train_loss = DistillLoss(loss_fn, task.kind == MULTI_LABEL, teacher.alpha, teacher.temperature).to(device)
    sampler = make_sampler([length_of(f) for f in train_f], cfg.batch_size, cfg.padding, cfg.max_tokens, cfg.seed)
    sampler = shard_sampler(sampler)  # distributed: this rank's shard of each global batch
    state = fit(model, train_loss, TrainData(train_f, sampler, collate_fn), evaluate, loop_config(cfg), out_dir, device)
    if "scores" in best and not cfg.resume:
        scores = best["scores"]  # the best evaluation already scored the weights fit() restored
    else:  # resumed: the best evaluation may have happened in an earlier process
        scores = score(cfg, task, model, dev_f, collate_fn, device)
    summary = dataclasses.asdict(state) | {"metric": cfg.metric, "patience": cfg.patience}
    summary["start_is_chance"] = fresh_head
    if state.total_steps == 0:  # --epochs 0: its one evaluation is the score before (and without) training
        summary |= {"start": {cfg.metric: state.best}, "best": None, "best_epoch": 0}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return Trial(model, summary, scores, collate_fn)


def start_row(summary: dict, metric: str) -> dict:
    """One trained model's score before training and its best, flat for a fold's or member's table row."""
    return {
        f"start_{metric}": (summary.get("start") or {}).get(metric),
        "best": summary.get("best"),
        "start_is_chance": summary.get("start_is_chance", False),
    }


def mean_start(rows: list[dict], metric: str) -> dict:
    """The models' mean score before training and mean best (eval/report.start_lines prints them), or {}."""
    starts = [r[f"start_{metric}"] for r in rows if r.get(f"start_{metric}") is not None]
    if not starts:
        return {}
    bests = [r["best"] for r in rows if r.get("best") is not None]
    return {
        "metric": metric,
        "start": {metric: float(np.mean(starts))},
        "best": float(np.mean(bests)) if bests else None,
        "start_is_chance": rows[0].get("start_is_chance", False),
    }
