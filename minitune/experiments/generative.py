"""`--head generative`: classify by letting an instruct decoder answer in its chat format.

The walk: the checkpoint as a causal LM (models/decoder.py DecoderForCausalLM), its chat template (data/chat.py),
pad / padding side / eos taken from the checkpoint and logged, the prompts (data/prompts.py: instruction, few-shot
turns), then one of three ways to answer (`--answer-mode`):
- constrained: greedy generation restricted to the label trie (models/constrained.py), always a valid answer;
- score: the log-likelihood of every label after the prompt, softmaxed into probabilities (no generation);
- free: unconstrained greedy generation, parsed to labels (eval/generations.py).
Scores go through the same task_report (and, for multi-label, dev-tuned thresholds) as a classification head's, so
the report reads the same; generated answers add counts of empty and label-less answers, with a few shown.

Only evaluation is here (`--epochs 0`: zero-shot, or few-shot with `--shots K`); instruction tuning with LoRA is
not implemented yet, and asking for it is refused with a clear message.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.hub import resolve_model
from minitune.checkpoints.load import load_model, read_config
from minitune.config import RunConfig
from minitune.data.chat import ChatTemplate, load_chat_template
from minitune.data.kinds import MULTI_LABEL
from minitune.data.prompts import (
    SEPARATOR,
    PromptTemplate,
    answer_text,
    choose_shots,
    display_names,
    messages,
    prompt_ids,
    truncate_text,
)
from minitune.data.splits import subsample
from minitune.data.tasks import Example, TaskData, label_array
from minitune.data.tokenizer import Tokenizer
from minitune.errors import ConfigError
from minitune.eval.generations import generation_stats, one_hot, parse_answer
from minitune.eval.scoring import task_report
from minitune.eval.thresholds import choose_thresholds
from minitune.models.constrained import LabelConstraint, continuation, score_labels
from minitune.models.decoder import MODEL_TYPES as DECODER_TYPES
from minitune.models.generate import GenerationConfig, generate

log = logging.getLogger("minitune")
ANSWER_MODES = ("constrained", "score", "free")


class Answerer:
    """Prompts -> scores (N, C) for one task, one model, one set of shots."""

    def __init__(
        self,
        cfg: RunConfig,
        task: TaskData,
        model,
        tokenizer: Tokenizer,
        chat: ChatTemplate | None,
        shots: list[Example],
        template: PromptTemplate | None,
    ):
        self.cfg, self.task, self.model, self.tok, self.chat = cfg, task, model, tokenizer, chat
        self.shots, self.template = shots, template
        self.names = display_names(task)
        self.eos, self.pad = answer_tokens(model, tokenizer, cfg.model)
        # The text right before an answer, to tokenize labels as they follow it (BPE merges across the boundary).
        if chat is not None:
            self.context, lead = chat.render([{"role": "user", "content": "x"}], add_generation_prompt=True), ""
        else:
            self.context, lead = "Answer:", " "
        self.first = [continuation(tokenizer, self.context, lead + n) for n in self.names]
        self.then = [continuation(tokenizer, self.context + lead + self.names[0], SEPARATOR + n) for n in self.names]

    def prompts(self, examples: list[Example]) -> list[list[int]]:
        shots = [truncate_text(self.tok, s, self.cfg.max_length) for s in self.shots]
        return [
            prompt_ids(
                self.tok,
                self.chat,
                messages(self.task, truncate_text(self.tok, ex, self.cfg.max_length), shots, self.template),
            )
            for ex in examples
        ]

    def __call__(self, examples: list[Example], device: torch.device) -> tuple[np.ndarray, dict | None]:
        prompts = self.prompts(examples)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        bs = max(1, self.cfg.batch_size)
        scores: list = [None] * len(prompts)
        texts: list[str] = [""] * len(prompts)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            batch = [prompts[i] for i in idx]
            for i, (s, t) in zip(idx, zip(*self._answer(batch))):
                scores[i], texts[i] = s, t
        out = np.stack(scores)
        if self.cfg.answer_mode == "score":
            return out, None
        chosen = [list(np.flatnonzero(s)) for s in out]
        return out, generation_stats(texts, chosen, [answer_text(self.task, ex) for ex in examples])

    def _answer(self, batch: list[list[int]]) -> tuple[list[np.ndarray], list[str]]:
        n, multi = len(self.names), self.task.kind == MULTI_LABEL
        if self.cfg.answer_mode == "score":
            seqs = self.first if multi else [[*s, self.eos] for s in self.first]
            ll = score_labels(self.model, batch, seqs, self.pad)
            return list(ll.softmax(-1).cpu().numpy()), [""] * len(batch)
        gen = GenerationConfig(eos_token_ids=[self.eos], pad_token_id=self.pad, max_new_tokens=self.cfg.max_new_tokens)
        if self.cfg.answer_mode == "constrained":
            c = LabelConstraint(self.first, self.eos, then=self.then if multi else None)
            gen.max_new_tokens = c.max_tokens()
            new = generate(self.model, batch, gen, logits_processor=c)
            chosen = [c.labels(t) for t in new]
        else:
            new = generate(self.model, batch, gen)
        texts = [self.tok.decode(t, skip_special_tokens=True) for t in new]
        if self.cfg.answer_mode == "free":
            chosen = [parse_answer(t, self.names, self.task.kind) for t in texts]
        return list(one_hot(chosen, n)), texts


def answer_tokens(model, tokenizer: Tokenizer, name: str) -> tuple[int, int]:
    """(the token that ends an answer, the pad token) from the checkpoint: the tokenizer's eos (an instruct
    tokenizer's is its end-of-turn token), else config.json's; pad: the tokenizer's, else eos. Logged."""
    eos = tokenizer.eos_token_id
    cfg_eos = model.hf_config.get("eos_token_id")
    if eos is None:
        eos = cfg_eos[0] if isinstance(cfg_eos, list) else cfg_eos
    if eos is None:
        raise ConfigError(f"`model` {name}: neither the tokenizer nor config.json names an eos token to end answers")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    log.info("generation: eos %r (id %d), pad id %d, prompts padded on the left", tokenizer.decode([eos]), eos, pad)
    return eos, pad


def _splits(cfg: RunConfig, task: TaskData) -> tuple[list[Example], list[Example], list[Example] | None]:
    """(train to draw shots from, dev, the fold's test part): holdout tasks use train/dev (dev: 10% of train
    when there is none); recipe-mpr uses fold 0's train, validation and test parts."""
    if task.folds:
        tr, va, te = task.folds[0]
        pick = lambda idx: [task.train[i] for i in idx]  # noqa: E731
        return pick(tr), subsample(pick(va), cfg.max_eval_samples, None), pick(te)
    dev = subsample(task.dev, cfg.max_eval_samples, None)
    train = task.train
    if not dev:
        n = max(1, len(train) // 10)
        train, dev = train[n:], subsample(train[:n], cfg.max_eval_samples, None)
    return train, dev, None


def check_generative(cfg: RunConfig, model_type: str | None) -> None:
    if model_type not in DECODER_TYPES:
        raise ConfigError(
            f"--head generative needs a decoder checkpoint ({', '.join(DECODER_TYPES)}); {cfg.model} is "
            f"{model_type or 'not one'}: use e.g. --model smollm2"
        )
    if cfg.epochs > 0:
        raise ConfigError(
            "--head generative: instruction tuning is not implemented yet; add --epochs 0 to evaluate zero-shot "
            "(or few-shot with --shots K)"
        )


def run_generative(
    cfg: RunConfig, task: TaskData, tokenizer: Tokenizer, test: list[Example] | None, out: Path, device: torch.device
) -> dict:
    """Zero- or few-shot evaluation on dev (and --test-file / recipe-mpr's fold-0 test part)."""
    t0 = time.perf_counter()
    path = resolve_model(cfg.model)
    check_generative(cfg, "llama" if path.suffix.lower() == ".gguf" else read_config(path).get("model_type"))
    template = PromptTemplate(cfg.prompt_template) if cfg.prompt_template else None
    model = load_model(cfg.model, head="causal_lm").to(device)
    chat = load_chat_template(cfg.model, tokenizer)
    log.info("chat template: %s", chat.where if chat else "none (plain-text prompts)")
    train_ex, dev_ex, fold_test = _splits(cfg, task)
    shots = choose_shots(task, train_ex, cfg.shots, cfg.seed)
    answer = Answerer(cfg, task, model, tokenizer, chat, shots, template)
    example = tokenizer.decode(answer.prompts(dev_ex[:1])[0])
    log.info("first dev prompt:\n%s", example)
    dev_scores, dev_gen = answer(dev_ex, device)
    thresholds = tuned = None
    if task.kind == MULTI_LABEL:
        thresholds = choose_thresholds(
            label_array(task, dev_ex), dev_scores, task.label_names, cfg.threshold, cfg.metric
        )
        tuned = np.array(list(thresholds["per_label"].values()))
    summary = {
        "head": "generative",
        "answer_mode": cfg.answer_mode,
        "shots": len(shots),
        "epochs": 0,
        "saved": "nothing trained: no model/ written",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    results = {"train": summary, "dev": task_report(task, dev_ex, dev_scores, cfg.threshold, tuned)}
    if dev_gen is not None:
        results["dev"]["generation"] = dev_gen
    if thresholds is not None:
        results["thresholds"] = thresholds
    for name, examples in (("test", test if test is not None else fold_test),):
        if examples:
            scores, gen = answer(examples, device)
            results[name] = task_report(task, examples, scores, cfg.threshold, tuned)
            if gen is not None:
                results[name]["generation"] = gen
    (out / "prompt_example.txt").write_text(example, encoding="utf-8")
    return results
