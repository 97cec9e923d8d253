"""Asking an instruct decoder to classify: prompts in its chat format -> scores (N, C), for `--head generative`.

The walk: the checkpoint's chat template (data/chat.py), pad / padding side / eos taken from the checkpoint and
logged, the prompts (data/prompts.py: instruction, few-shot turns), then one of three ways to answer
(`answer_mode`):
- constrained: greedy generation restricted to the label trie (models/constrained.py), always a valid answer;
- score: the log-likelihood of every label after the prompt, softmaxed into probabilities (no generation);
- free: unconstrained greedy generation, parsed to labels (eval/generations.py).
Scores go through the same task_report (and, for multi-label, tuned thresholds) as a classification head's, so the
report reads the same; generated answers add counts of empty and label-less answers, with a few shown. Training
and evaluation (instruct.py) and `minitune predict` (predict_generative.py) ask through this one class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minitune.config.sections import GenerativeSettings
from minitune.data.chat import ChatTemplate, load_chat_template
from minitune.data.kinds import MULTI_LABEL
from minitune.data.prompts import (
    SEPARATOR,
    PromptTemplate,
    answer_text,
    display_names,
    messages,
    prompt_ids,
    truncate_text,
)
from minitune.data.tasks import Example, TaskData
from minitune.data.tokenizer import Tokenizer
from minitune.errors import ConfigError
from minitune.eval.generations import generation_stats, one_hot, parse_answer
from minitune.models.constrained import LabelConstraint, continuation, score_labels
from minitune.models.generate import GenerationConfig, generate
from minitune.train.distributed import gathered_rows

log = logging.getLogger("minitune")


@dataclass(frozen=True)
class Asking:
    """How a checkpoint is asked: the answer settings, its chat template, the prompt template, the token limit of a
    prompt's text and how many prompts go in one batch. `name` is the checkpoint's, for messages."""

    settings: GenerativeSettings
    chat: ChatTemplate | None
    template: PromptTemplate | None
    max_length: int
    batch_size: int
    name: str


def asking(settings: GenerativeSettings, model: str, tokenizer: Tokenizer, max_length: int, batch_size: int) -> Asking:
    """An Asking from the settings: the chat template read from `model` (a name, directory or .gguf), the prompt
    template from `prompt_template` (a Jinja file), or from the saved template beside a tuned model."""
    template = PromptTemplate(Path(settings.prompt_template)) if settings.prompt_template else None
    chat = load_chat_template(model, tokenizer)
    log.info("chat template: %s", chat.where if chat else "none (plain-text prompts)")
    return Asking(settings, chat, template, max_length, batch_size, model)


class Answerer:
    """Prompts -> scores (N, C) for one task, one model, one set of shots."""

    def __init__(self, ask: Asking, task: TaskData, model, tokenizer: Tokenizer, shots: list[Example]):
        self.settings, self.task, self.model, self.tok, self.chat = ask.settings, task, model, tokenizer, ask.chat
        self.max_length, self.batch_size = ask.max_length, ask.batch_size
        self.shots, self.template = shots, ask.template
        self.names = display_names(task)
        self.eos, self.pad = answer_tokens(model, tokenizer, ask.name)
        # The text right before an answer, to tokenize labels as they follow it (BPE merges across the boundary).
        if self.chat is not None:
            self.context, lead = self.chat.render([{"role": "user", "content": "x"}], add_generation_prompt=True), ""
        else:
            self.context, lead = "Answer:", " "
        self.first = [continuation(tokenizer, self.context, lead + n) for n in self.names]
        self.then = [continuation(tokenizer, self.context + lead + self.names[0], SEPARATOR + n) for n in self.names]

    def prompts(self, examples: list[Example]) -> list[list[int]]:
        shots = [truncate_text(self.tok, s, self.max_length) for s in self.shots]
        return [
            prompt_ids(
                self.tok,
                self.chat,
                messages(self.task, truncate_text(self.tok, ex, self.max_length), shots, self.template),
            )
            for ex in examples
        ]

    def __call__(self, examples: list[Example]) -> tuple[np.ndarray, dict | None]:
        """Scores (N, C) in the examples' order and, for generated answers, their stats (None for score)."""
        scores, texts = self.answers(examples)
        return scores, self.stats(examples, scores, texts)

    def answers(self, examples: list[Example]) -> tuple[np.ndarray, list[str]]:
        """(scores (N, C), generated texts) in the examples' order. Under torchrun each rank answers a strided
        shard and every rank gets all answers, so selection and thresholds agree across ranks."""
        rows = gathered_rows(lambda shard: list(zip(*self._answers(shard))), examples)
        return np.stack([s for s, _ in rows]), [t for _, t in rows]

    def stats(self, examples: list[Example], scores: np.ndarray, texts: list[str]) -> dict | None:
        return answer_stats(self.task, self.settings.answer_mode, examples, scores, texts)

    def _answers(self, examples: list[Example]) -> tuple[list[np.ndarray], list[str]]:
        prompts = self.prompts(examples)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        bs = max(1, self.batch_size)
        scores: list = [None] * len(prompts)
        texts: list[str] = [""] * len(prompts)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            batch = [prompts[i] for i in idx]
            for i, (s, t) in zip(idx, zip(*self._answer(batch))):
                scores[i], texts[i] = s, t
        return scores, texts

    def _answer(self, batch: list[list[int]]) -> tuple[list[np.ndarray], list[str]]:
        n, multi = len(self.names), self.task.kind == MULTI_LABEL
        if self.settings.answer_mode == "score":
            seqs = self.first if multi else [[*s, self.eos] for s in self.first]
            ll = score_labels(self.model, batch, seqs, self.pad)
            return list(ll.softmax(-1).cpu().numpy()), [""] * len(batch)
        gen = GenerationConfig(
            eos_token_ids=[self.eos], pad_token_id=self.pad, max_new_tokens=self.settings.max_new_tokens
        )
        if self.settings.answer_mode == "constrained":
            c = LabelConstraint(self.first, self.eos, then=self.then if multi else None)
            gen.max_new_tokens = c.max_tokens()
            new = generate(self.model, batch, gen, logits_processor=c)
            chosen = [c.labels(t) for t in new]
        else:
            new = generate(self.model, batch, gen)
        texts = [self.tok.decode(t, skip_special_tokens=True) for t in new]
        if self.settings.answer_mode == "free":
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


def answer_stats(task: TaskData, answer_mode: str, examples: list[Example], scores: np.ndarray, texts: list[str]):
    """How generated answers came out (empty, naming no label, a few shown); None when labels were scored."""
    if answer_mode == "score":
        return None
    chosen = [list(np.flatnonzero(s)) for s in scores]
    gold = [answer_text(task, ex) if ex.label is not None else "" for ex in examples]
    return generation_stats(texts, chosen, gold)
