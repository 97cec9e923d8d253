"""`head` generative: an instruct decoder asked to classify in its chat format, and instruction-tuned when there
are epochs. The generative counterpart of finetune.py, called by it: the same steps with prompts and answers.

    model     the checkpoint as a causal LM (NF4 with `quantize`), with LoRA adapters       checkpoints/load.py
    prompts   its chat template, the few-shot turns drawn from train                       eval/answers.py
    features  prompt + answer text + the eos that ends the turn                            below
    loss      next-token cross-entropy on the answer tokens only                           below (AnswerLoss)
    fit       the same training loop as the heads', selecting on the dev answers          train/loop.py

Each training example is the chat prompt (as evaluation builds it, shots included) followed by the answer text as
the tokenizer splits it after the prompt, then the eos token that ends the turn. The loss is next-token
cross-entropy on the answer tokens and that eos only (the prompt positions are ignored), averaged over each
example's answer, then over the examples: every example weighs the same whatever its answer's length, as in the
heads' losses, so gradient accumulation and torchrun's sharded global batches (which weight micro-batches by their
examples) give exactly the gradient of one large batch. Batches are length-bucketed and right-padded, so position
ids are plain aranges. `epochs` 0 asks the model as it is (zero-shot, or few-shot with `shots`).

A tuned model is saved as model/ (merged), adapter/ (LoRA) and generative.json: what `minitune predict` needs to
ask it the same way (predict_generative.py).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minitune.adapters.lora import add_lora
from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.load import load_model
from minitune.checkpoints.rundir import GENERATIVE_FILE
from minitune.checkpoints.save import save_model_dir
from minitune.config.load import run_signature
from minitune.config.sections import ModelSettings, RunConfig
from minitune.data.batching import make_sampler
from minitune.data.prompts import answer_text, choose_shots
from minitune.data.splits import subsample
from minitune.data.tasks import Example, TaskData
from minitune.data.tokenizer import Tokenizer
from minitune.eval.answers import Answerer, asking
from minitune.eval.metrics import selection_metrics
from minitune.eval.scoring import task_report
from minitune.models.constrained import continuation
from minitune.train.distributed import shard_sampler
from minitune.train.loop import TrainData, fit, loop_summary
from minitune.train.seeding import seed_everything

log = logging.getLogger("minitune")


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


def causal_lm(model: ModelSettings, seed: int, device: torch.device) -> nn.Module:
    """The checkpoint as a causal LM (NF4 base with `quantize`), with its LoRA adapters, on `device`."""
    lm = load_model(model.model, head="causal_lm", quantize=model.quantize)
    seed_everything(seed)  # the adapters' initial weights: the same in every run (and fold) with this seed
    if model.adapter.lora_r:
        add_lora(lm, model.adapter)
    return lm.to(device)


@dataclass
class Asked:
    """One model asked (and, with epochs, tuned) on one train/dev split."""

    answerer: Answerer
    summary: dict
    dev_scores: np.ndarray
    dev_generation: dict | None
    prompt_example: str
    trained_on: list[Example]  # the examples instruction tuning used (none when only asked)


def ask_and_tune(
    cfg: RunConfig,
    task: TaskData,
    train_ex: list[Example],
    dev_ex: list[Example],
    tokenizer: Tokenizer,
    out: Path,
    device: torch.device,
    *,
    resume: bool = False,
    lm: nn.Module | None = None,
) -> Asked:
    """Shots from train_ex; `epochs` 0: dev answered as the model is (`lm`: one already loaded, reused when nothing
    trains); else instruction-tuned on train_ex, selected on dev_ex, checkpointed in `out`."""
    t0 = time.perf_counter()
    lm = lm if lm is not None else causal_lm(cfg.model, cfg.seed, device)
    ask = asking(cfg.generative, cfg.model.model, tokenizer, cfg.data.max_length, cfg.data.batch_size)
    shots = choose_shots(task, train_ex, cfg.generative.shots, cfg.seed)
    answerer = Answerer(ask, task, lm, tokenizer, shots)
    example = tokenizer.decode(answerer.prompts(dev_ex[:1])[0])
    log.info("first dev prompt:\n%s", example)
    summary = {"head": "generative", "answer_mode": cfg.generative.answer_mode, "shots": len(shots)}
    if cfg.loop.epochs > 0:
        train_ex = subsample(train_ex, cfg.data.max_train_samples, cfg.seed)  # shots come from the whole train split
        loop, (scores, generation) = instruction_tune(cfg, answerer, train_ex, dev_ex, out, device, resume)
        return Asked(answerer, summary | loop, scores, generation, example, train_ex)
    scores, generation = answerer(dev_ex)
    start = task_report(task, dev_ex, scores, cfg.eval.threshold)[cfg.loop.metric]  # asked as it is: its start
    summary |= {"epochs": 0, "saved": "nothing trained: no model/ written", "metric": cfg.loop.metric}
    summary |= {"start": {cfg.loop.metric: start}, "start_is_chance": False}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return Asked(answerer, summary, scores, generation, example, [])


def instruction_tune(
    cfg: RunConfig, answerer: Answerer, train_ex: list[Example], dev_ex: list[Example], out: Path, device, resume: bool
) -> tuple[dict, tuple[np.ndarray, dict | None]]:
    """Fine-tune answerer.model in place on train_ex, selecting on dev_ex; (loop summary, (best dev scores, their
    generation stats))."""
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    task = answerer.task
    feats = answer_features(answerer, train_ex)
    lengths = [len(f["input_ids"]) for f in feats]
    sampler = make_sampler(lengths, cfg.data.batch_size, "bucketed", cfg.data.max_tokens, cfg.seed)
    sampler = shard_sampler(sampler)  # torchrun: this rank's shard of each global batch

    def evaluate(m) -> tuple[dict, tuple]:
        scores, gen = answerer(dev_ex)
        rep = task_report(task, dev_ex, scores, cfg.eval.threshold)
        return selection_metrics(task.kind, rep), (scores, gen)

    data = TrainData(feats, sampler, lambda fs: collate_answers(fs, answerer.pad))
    kw = dict(resume=resume, signature=run_signature(cfg), distributed=cfg.distributed)
    fitted = fit(answerer.model, AnswerLoss(), data, evaluate, cfg.loop, out, device, **kw)
    return loop_summary(cfg.loop, fitted.state, False, t0), fitted.payload


def save_generative(out: Path, answerer: Answerer, thresholds: dict | None) -> None:
    """model/ (merged weights, tokenizer, chat template) and adapter/ (LoRA), plus generative.json: the task's
    kind and labels, the answer mode, the shots and prompt template, so `predict` asks the model the same way."""
    model, task = answerer.model, answerer.task
    model.num_labels, model.label_names, model.generative = task.num_labels, None, True
    save_model_dir(out, model, answerer.tok, task.kind, task.label_names, thresholds, trained_on=task.name)
    meta = {
        "kind": task.kind,
        "label_names": task.label_names,
        "answer_mode": answerer.settings.answer_mode,
        "max_length": answerer.max_length,
        "max_new_tokens": answerer.settings.max_new_tokens,
        "shots": [{"text": s.text, "pair": s.pair, "label": s.label, "choices": s.choices} for s in answerer.shots],
    }
    if answerer.template is not None:
        atomic_write_text(out / "model" / "prompt_template.jinja", answerer.template.source)
        meta["prompt_template"] = "prompt_template.jinja"
    if answerer.chat is not None:  # a GGUF's template is not in the tokenizer files written above
        atomic_write_text(out / "model" / "chat_template.jinja", answerer.chat.source)
    atomic_write_text(out / "model" / GENERATIVE_FILE, json.dumps(meta, indent=2) + "\n")
