"""`--head generative`: classify by letting an instruct decoder answer in its chat format.

The walk: the checkpoint as a causal LM (models/decoder.py DecoderForCausalLM), its chat template (data/chat.py),
pad / padding side / eos taken from the checkpoint and logged, the prompts (data/prompts.py: instruction, few-shot
turns), then one of three ways to answer (`--answer-mode`):
- constrained: greedy generation restricted to the label trie (models/constrained.py), always a valid answer;
- score: the log-likelihood of every label after the prompt, softmaxed into probabilities (no generation);
- free: unconstrained greedy generation, parsed to labels (eval/generations.py).
Scores go through the same task_report (and, for multi-label, dev-tuned thresholds) as a classification head's, so
the report reads the same; generated answers add counts of empty and label-less answers, with a few shown.

`--epochs 0` evaluates as the checkpoint is (zero-shot, or few-shot with `--shots K`); more epochs instruction-tune
first (experiments/instruct.py: LoRA, QLoRA or full, loss on the answer tokens), and the tuned model is saved
(model/ merged, adapter/ for LoRA, generative.json: what `predict` needs to ask it the same way).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.hub import resolve_model
from minitune.checkpoints.load import load_model, load_tokenizer, read_config
from minitune.config import RunConfig
from minitune.data.chat import ChatTemplate, load_chat_template
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
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
from minitune.data.splits import holdout_examples, subsample
from minitune.data.tasks import Example, TaskData, label_array
from minitune.data.tokenizer import Tokenizer
from minitune.errors import ConfigError
from minitune.eval.generations import generation_stats, one_hot, parse_answer
from minitune.eval.predictions import write_example_predictions
from minitune.eval.scoring import task_report
from minitune.eval.thresholds import choose_thresholds
from minitune.experiments.instruct import GENERATIVE_FILE, add_adapters, instruction_tune, save_generative
from minitune.experiments.trial import seed_everything
from minitune.models.constrained import LabelConstraint, continuation, score_labels
from minitune.models.decoder import MODEL_TYPES as DECODER_TYPES
from minitune.models.generate import GenerationConfig, generate
from minitune.train.distributed import gathered_rows, is_main

log = logging.getLogger("minitune")


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
        if self.cfg.answer_mode == "score":
            return None
        chosen = [list(np.flatnonzero(s)) for s in scores]
        gold = [answer_text(self.task, ex) if ex.label is not None else "" for ex in examples]
        return generation_stats(texts, chosen, gold)

    def _answers(self, examples: list[Example]) -> tuple[list[np.ndarray], list[str]]:
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
        return scores, texts

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


def holdout_splits(cfg: RunConfig, task: TaskData) -> tuple[list[Example], list[Example]]:
    """(train to draw shots from and tune on, dev) as the classifier runs split them (dev: 10% of train,
    stratified, when there is none)."""
    train, dev = task.train, subsample(task.dev, cfg.max_eval_samples, None)
    if not dev:
        train, dev = holdout_examples(train, label_array(task, train), 0.1, cfg.seed)
        dev = subsample(dev, cfg.max_eval_samples, None)
    return train, dev


def check_generative(cfg: RunConfig, model_type: str | None) -> None:
    if model_type not in DECODER_TYPES:
        raise ConfigError(
            f"--head generative needs a decoder checkpoint ({', '.join(DECODER_TYPES)}); {cfg.model} is "
            f"{model_type or 'not one'}: use e.g. --model smollm2"
        )


def check_decoder(cfg: RunConfig) -> None:
    path = resolve_model(cfg.model)
    check_generative(cfg, "llama" if path.suffix.lower() == ".gguf" else read_config(path).get("model_type"))


def causal_lm(cfg: RunConfig, device: torch.device):
    """The checkpoint as a causal LM (NF4 base with --quantize), with the run's LoRA adapters, on `device`."""
    model = load_model(cfg.model, head="causal_lm", quantize=cfg.quantize)
    seed_everything(cfg.seed)  # the adapters' initial weights: the same in every run (and fold) with this seed
    add_adapters(cfg, model)
    return model.to(device)


@dataclass
class GenerativeTrial:
    """One model asked (and, with epochs, tuned) on one train/dev split: the unit holdout and folds repeat."""

    answer: Answerer
    summary: dict
    dev_scores: np.ndarray
    dev_generation: dict | None
    prompt_example: str


def generative_trial(
    cfg: RunConfig,
    task: TaskData,
    tokenizer: Tokenizer,
    train_ex: list[Example],
    dev_ex: list[Example],
    out: Path,
    device: torch.device,
    model=None,
) -> GenerativeTrial:
    """Shots from train_ex; `--epochs 0`: dev answered as the model is (`model`: one already loaded, reused when
    nothing trains); else instruction-tuned on train_ex, selected on dev_ex, checkpointed in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    template = PromptTemplate(cfg.prompt_template) if cfg.prompt_template else None
    model = model if model is not None else causal_lm(cfg, device)
    chat = load_chat_template(cfg.model, tokenizer)
    log.info("chat template: %s", chat.where if chat else "none (plain-text prompts)")
    shots = choose_shots(task, train_ex, cfg.shots, cfg.seed)
    answer = Answerer(cfg, task, model, tokenizer, chat, shots, template)
    example = tokenizer.decode(answer.prompts(dev_ex[:1])[0])
    log.info("first dev prompt:\n%s", example)
    summary = {"head": "generative", "answer_mode": cfg.answer_mode, "shots": len(shots)}
    if cfg.epochs > 0:
        train_ex = subsample(train_ex, cfg.max_train_samples, cfg.seed)  # shots come from the whole train split
        loop, best = instruction_tune(cfg, answer, train_ex, dev_ex, out, device)
        return GenerativeTrial(answer, summary | loop, best["scores"], best["generation"], example)
    dev_scores, dev_gen = answer(dev_ex)
    summary |= {"epochs": 0, "saved": "nothing trained: no model/ written"}
    return GenerativeTrial(answer, summary, dev_scores, dev_gen, example)


def run_generative(
    cfg: RunConfig, task: TaskData, tokenizer: Tokenizer, test: list[Example] | None, out: Path, device: torch.device
) -> dict:
    """Evaluate zero- or few-shot (--epochs 0), or instruction-tune first; dev, then --test-file. A tuned model is
    saved as model/ (merged) and adapter/ (LoRA), with generative.json. Recipe-MPR: generative_folds.py."""
    t0 = time.perf_counter()
    check_decoder(cfg)
    train_ex, dev_ex = holdout_splits(cfg, task)
    trial = generative_trial(cfg, task, tokenizer, train_ex, dev_ex, out, device)
    summary, dev_scores = trial.summary, trial.dev_scores
    thresholds = tuned = None
    if task.kind == MULTI_LABEL:
        thresholds = choose_thresholds(
            label_array(task, dev_ex), dev_scores, task.label_names, cfg.threshold, cfg.metric
        )
        tuned = np.array(list(thresholds["per_label"].values()))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    results = {"train": summary, "dev": task_report(task, dev_ex, dev_scores, cfg.threshold, tuned)}
    if cfg.epochs == 0:  # evaluated as the checkpoint is: this is the before-training score (instruct.py: step 0)
        summary |= {"metric": cfg.metric, "start": {cfg.metric: results["dev"][cfg.metric]}, "start_is_chance": False}
    if trial.dev_generation is not None:
        results["dev"]["generation"] = trial.dev_generation
    if thresholds is not None:
        results["thresholds"] = thresholds
    if test:
        scores, gen = trial.answer(test)
        results["test"] = task_report(task, test, scores, cfg.threshold, tuned)
        if gen is not None:
            results["test"]["generation"] = gen
    if is_main():  # torchrun: rank 0 alone writes
        (out / "prompt_example.txt").write_text(trial.prompt_example, encoding="utf-8")
        use = tuned if thresholds and thresholds["use"] == "tuned" else np.full(task.num_labels, cfg.threshold)
        write_example_predictions(out / "dev_predictions.csv", task, dev_ex, dev_scores, use)
        if cfg.epochs > 0:
            save_generative(out, trial.answer, thresholds)
    return results


def generative_meta(model_dir: Path) -> dict:
    """What a --head generative run saved beside its model (generative.json); refused for multiple choice, whose
    questions with options predict does not put to a generative model."""
    meta = json.loads((model_dir / GENERATIVE_FILE).read_text(encoding="utf-8"))
    if meta["kind"] == MULTIPLE_CHOICE:
        raise ConfigError(
            f"`model` {model_dir}: a --head generative multiple-choice model; predict does not ask it questions "
            "with options: score labelled items with `test_file` in a training run"
        )
    return meta


def predict_generative(
    model_dir: Path, examples: list[Example], batch_size: int, max_length: int | None, device: torch.device
) -> tuple[list[str], bool, np.ndarray]:
    """A model saved by a --head generative run answers `examples` as it was tuned to: (label names, whether
    multi-label, scores (N, C))."""
    meta = generative_meta(model_dir)
    task = TaskData("predict", meta["kind"], meta["label_names"], [], [])
    cfg = RunConfig(
        model=str(model_dir),
        answer_mode=meta["answer_mode"],
        max_length=max_length or meta["max_length"],
        max_new_tokens=meta["max_new_tokens"],
        batch_size=batch_size,
    )
    tokenizer = load_tokenizer(model_dir)
    template = PromptTemplate(model_dir / meta["prompt_template"]) if meta.get("prompt_template") else None
    model = load_model(model_dir, head="causal_lm").to(device)
    shots = [Example(**s) for s in meta["shots"]]
    answer = Answerer(cfg, task, model, tokenizer, load_chat_template(str(model_dir), tokenizer), shots, template)
    scores, _ = answer(examples)
    return task.label_names, task.kind == MULTI_LABEL, scores
