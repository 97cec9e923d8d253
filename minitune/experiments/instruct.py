"""Instruction tuning for `--head generative`: LoRA / QLoRA (or full) fine-tuning on prompt -> answer text.

Each training example is the chat prompt (as evaluation builds it, shots included) followed by the answer text as
the tokenizer splits it after the prompt, then the eos token that ends the turn. The loss is next-token
cross-entropy on the answer tokens and that eos only (the prompt positions are ignored), averaged over each
example's answer, then over the examples: every example weighs the same whatever its answer's length, as in the
heads' losses, so gradient accumulation and torchrun's sharded global batches (which weight micro-batches by their
examples) give exactly the gradient of one large batch. Batches are length-bucketed (--padding bucketed) and
right-padded, so position ids are plain aranges. The same training loop as the heads' runs it (train/loop.py fit;
under torchrun each rank trains its shard of each global batch), selecting on the dev metric of the answers.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minitune.adapters.lora import apply_adapters
from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.save import save_model_dir
from minitune.config import RunConfig
from minitune.data.batching import make_sampler
from minitune.data.prompts import answer_text
from minitune.data.tasks import Example
from minitune.eval.metrics import SELECTION_METRICS
from minitune.eval.scoring import task_report
from minitune.experiments.trial import loop_config, seed_everything
from minitune.models.constrained import continuation
from minitune.train.distributed import is_main, shard_sampler
from minitune.train.loop import TrainData, fit

IGNORE = -100


class AnswerLoss(nn.Module):
    """Cross-entropy of the next-token logits (B, T, V) on the labelled positions of labels (B, T): the mean over
    each row's labelled positions, then the mean over rows."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = labels[:, 1:]  # position t predicts token t + 1
        per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
        answer = target != IGNORE  # (B, T - 1)
        return ((per_token * answer).sum(1) / answer.sum(1).clamp(min=1)).mean()


def answer_features(answerer, examples: list[Example]) -> list[dict]:
    """input_ids = prompt + answer + eos; labels = IGNORE over the prompt, the answer and eos after it."""
    lead = "" if answerer.chat is not None else " "
    feats = []
    for ex, prompt in zip(examples, answerer.prompts(examples)):
        answer = continuation(answerer.tok, answerer.context, lead + answer_text(answerer.task, ex)) + [answerer.eos]
        feats.append({"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer})
    return feats


def collate_answers(feats: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, attention_mask and labels (IGNORE at pads)."""
    t = max(len(f["input_ids"]) for f in feats)
    ids = torch.full((len(feats), t), pad_id, dtype=torch.long)
    labels = torch.full((len(feats), t), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(feats), t, dtype=torch.long)
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def add_adapters(cfg: RunConfig, model: nn.Module) -> None:
    if not cfg.lora_r:
        return
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()] if cfg.lora_targets else None
    names, trainable, total = apply_adapters(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets)
    if is_main():  # torchrun: said once
        print(f"LoRA r={cfg.lora_r} on {len(names)} layers: {trainable:,} trainable of {total:,} parameters")


def instruction_tune(
    cfg: RunConfig, answerer, train_ex: list[Example], dev_ex: list[Example], out: Path, device: torch.device
) -> tuple[dict, object]:
    """Fine-tune answerer.model in place on train_ex, selecting on dev_ex; (loop summary, best dev scores)."""
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    task = answerer.task
    feats = answer_features(answerer, train_ex)
    sampler = make_sampler([len(f["input_ids"]) for f in feats], cfg.batch_size, "bucketed", cfg.max_tokens, cfg.seed)
    sampler = shard_sampler(sampler)  # torchrun: this rank's shard of each global batch
    best: dict = {}
    # fit's first call in a fresh run is the zero-shot score before training: reported, never kept as the best
    before_training = [not cfg.resume]

    def evaluate(m) -> dict:
        scores, gen = answerer(dev_ex)
        rep = task_report(task, dev_ex, scores, cfg.threshold)
        is_start = before_training.pop() if before_training else False  # reported as the start, never the best
        if not is_start and (not best or rep[cfg.metric] > best["value"]):
            best.update(value=rep[cfg.metric], scores=scores, generation=gen)
        return {k: rep[k] for k in SELECTION_METRICS[task.kind] if k in rep}

    data = TrainData(feats, sampler, lambda fs: collate_answers(fs, answerer.pad))
    state = fit(answerer.model, AnswerLoss(), data, evaluate, loop_config(cfg), out, device)
    if "scores" not in best or cfg.resume:
        scores, gen = answerer(dev_ex)
        best.update(scores=scores, generation=gen)
    summary = dataclasses.asdict(state) | {"seconds": round(time.perf_counter() - t0, 1), "start_is_chance": False}
    return summary, best


GENERATIVE_FILE = "generative.json"


def save_generative(out: Path, answerer, thresholds: dict | None) -> None:
    """model/ (merged weights, tokenizer, chat template) and adapter/ (LoRA), plus generative.json: the task's
    kind and labels, the answer mode, the shots and prompt template, so `predict` asks the model the same way."""
    model, task = answerer.model, answerer.task
    model.num_labels, model.label_names = task.num_labels, None
    save_model_dir(out, model, answerer.tok, task.kind, task.label_names, thresholds)
    cfg = answerer.cfg
    meta = {
        "kind": task.kind,
        "label_names": task.label_names,
        "answer_mode": cfg.answer_mode,
        "max_length": cfg.max_length,
        "max_new_tokens": cfg.max_new_tokens,
        "shots": [{"text": s.text, "pair": s.pair, "label": s.label, "choices": s.choices} for s in answerer.shots],
    }
    if answerer.template is not None:
        atomic_write_text(out / "model" / "prompt_template.jinja", answerer.template.source)
        meta["prompt_template"] = "prompt_template.jinja"
    if answerer.chat is not None:  # a GGUF's template is not in the tokenizer files written above
        atomic_write_text(out / "model" / "chat_template.jinja", answerer.chat.source)
    atomic_write_text(out / "model" / GENERATIVE_FILE, json.dumps(meta, indent=2) + "\n")
