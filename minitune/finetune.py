"""The single fine-tune: one model trained on a train split and selected on a dev split. Every protocol repeats it
(experiments/: a holdout run, Recipe-MPR's folds, cv folds, seed ensembles, sweep trials, distillation).

Read top to bottom, `finetune` is the whole run of one model:

    features  augment train, tokenize train and dev, oversample rare    data/augment.py, data/features.py
    model     the checkpoint with its head, pooling, LoRA and NF4       checkpoints/load.py, adapters/
    loss      the task's loss (adaptive weights for a sum)              train/losses.py, train/loss_weighting.py
    batches   the sampler and the collate function                      data/batching.py
    fit       the training loop, which keeps the best weights           train/loop.py (train/adversarial.py)
    scores    the best weights' dev probabilities, from fit             eval/scoring.py

and returns them as a `Tuned`: the model, the loop's summary, the dev probabilities, and how to score more examples
and save the model. With `head` generative an instruct decoder is asked (and, with epochs, instruction-tuned)
instead: instruct.py, the same steps with prompts and answers. Each step reads its own section of the settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minitune import instruct
from minitune.adapters.lora import add_lora
from minitune.checkpoints.load import choice_scorer_for, load_model
from minitune.checkpoints.save import save_adapter_dir, save_model_dir
from minitune.config.load import run_signature
from minitune.config.sections import ModelSettings, RunConfig
from minitune.data.augment import augmented_copies
from minitune.data.batching import length_of, make_collate, make_sampler
from minitune.data.features import open_cache, oversample_rare, tokenize
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.long_text import CHUNK_KEY
from minitune.data.sources import trained_on_text
from minitune.data.tasks import Example, TaskData, label_array
from minitune.data.token_cache import cache_folder
from minitune.eval.metrics import selection_metrics
from minitune.eval.scoring import predict_logits, predict_scores, probabilities, task_report
from minitune.models.ffnn import build_ffnn
from minitune.train.distill_loss import DistillLoss, with_soft_targets
from minitune.train.distributed import gathered_scores, is_main, shard_sampler
from minitune.train.loop import TrainData, fit, loop_summary
from minitune.train.loss_weighting import adaptive_loss
from minitune.train.losses import loss_for
from minitune.train.parallel import consolidated, is_sharded
from minitune.train.seeding import seed_everything

log = logging.getLogger("minitune")


@dataclass
class Tuned:
    """One fine-tuned model (or, with no epochs, one evaluated as loaded), as every protocol gets it back."""

    model: nn.Module
    summary: dict  # the loop's state, the start and best scores, the time it took
    dev_scores: np.ndarray  # the best weights' dev probabilities (N, C)
    predict: Callable[[list[Example]], tuple[np.ndarray, list[str] | None]]  # probabilities (and generated texts)
    save: Callable[[Path, dict | None], None]  # model/ (and adapter/) into a run directory, with the thresholds
    save_fold: Callable[[Path, Path, int], None]  # (run dir, fold dir, k): what a fold of a folds protocol keeps
    dev_generation: dict | None = None  # generative: how the dev answers came out
    stats: Callable | None = None  # generative: (examples, scores, texts) -> how the answers came out
    prompt_example: str | None = None  # generative: the first dev prompt, as the model read it
    trained_on: list[Example] = field(default_factory=list)  # the examples it trained on (none: asked as it is)

    def scores(self, examples: list[Example]) -> np.ndarray:
        return self.predict(examples)[0]


def finetune(
    cfg: RunConfig,
    task: TaskData,
    train_ex: list[Example],
    dev_ex: list[Example],
    tokenizer,
    out: Path,
    device: torch.device,
    *,
    resume: bool = False,
    tokenized: dict | None = None,
    teacher=None,
    lm=None,
    judge=None,
) -> Tuned:
    """Fine-tune one model on train_ex, selecting on dev_ex, checkpointing in `out` (`resume`: continue from its
    checkpoint). `tokenized` (id(example) -> features) lets the folds of one run share one tokenization. `teacher`
    (experiments/distill.Teacher): learn its probabilities too; dev is still scored with the task loss. `lm`: a
    causal LM already loaded, which the generative head reuses when nothing trains. `judge`: a search's pruner."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.model.head == "generative":
        return _generative(cfg, task, train_ex, dev_ex, tokenizer, out, device, resume, lm)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    # features: every example tokenized once; the training ones with a teacher's probabilities, rare labels repeated
    featurize = features_for(cfg, task, tokenizer, tokenized)
    copies = augmented_copies(cfg.data.augmentation, task.kind, train_ex, label_array(task, train_ex), cfg.seed, device)
    trained = train_ex + copies  # augmentation: copies of training examples (data/augment.py), never of dev
    train_f = training_features(cfg, task, trained, featurize(trained), teacher, device)
    dev_f = featurize(dev_ex)
    log.info("features for %d train / %d dev examples in %.1fs", len(train_f), len(dev_f), time.perf_counter() - t0)
    # model: the checkpoint with the task's head, pooling, LoRA and NF4 as the model settings say
    model = build_model(cfg.model, task, tokenizer).to(device)
    # loss: the task's, class weights from the training labels; distillation adds the teacher's term
    loss_fn, train_loss = losses_for(cfg, task, train_ex, teacher, device)
    # batches: which examples go together (random, bucketed or a token budget), and how they are padded
    d = cfg.data
    sampler = make_sampler([length_of(f) for f in train_f], d.batch_size, d.padding, d.max_tokens, cfg.seed)
    collate = make_collate(d.padding, d.max_length, tokenizer.pad_token_id)
    data = TrainData(train_f, shard_sampler(sampler), collate)  # torchrun: this rank's shard of each batch
    # fit: the loop trains, evaluates on dev and keeps the best weights with their dev probabilities; a fresh head
    # (chance level) is not scored before training, a loaded head or a bi-encoder's similarities are
    evaluate = dev_evaluator(cfg, task, dev_ex, dev_f, collate, loss_fn, device)
    fresh_head = not getattr(model, "head_trained", False)
    kw = dict(resume=resume, signature=run_signature(cfg), distributed=cfg.distributed, judge=judge)
    fitted = fit(model, train_loss, data, evaluate, cfg.loop, out, device, score_start=not fresh_head, **kw)
    # scores: the best weights' dev probabilities came back with fit; more examples are scored the same way
    summary = loop_summary(cfg.loop, fitted.state, fresh_head, t0)
    summary["augmented_copies"] = len(copies)
    tuned = _tuned(cfg, task, model, tokenizer, featurize, collate, out, device, summary, fitted.payload)
    tuned.trained_on = train_ex
    return tuned


def _tuned(cfg: RunConfig, task: TaskData, model, tokenizer, featurize, collate, out: Path, device, summary, scores):
    """A classifier's Tuned: more examples scored as dev was, and model/ saved in the Hub layout."""

    def predict(examples: list[Example]) -> tuple[np.ndarray, None]:
        return score(cfg, task.kind, model, featurize(examples), collate, device), None

    def save(run_dir: Path, thresholds: dict | None) -> None:
        whole = consolidated(model)  # FSDP: gathered onto rank 0, which alone writes
        if is_main():
            # In config.json, so predict cuts texts into the same windows (and a model trained on whole texts from a
            # chunked checkpoint does not inherit its key).
            whole.hf_config.pop(CHUNK_KEY, None)
            if cfg.data.long_text == "chunk":
                whole.hf_config[CHUNK_KEY] = {"max_length": cfg.data.max_length, "overlap": cfg.data.window_overlap()}
            card = trained_on_text(task)
            save_model_dir(run_dir, whole, tokenizer, task.kind, task.label_names, thresholds, trained_on=card)

    return Tuned(model, summary, scores, predict, save, lambda run_dir, fold_dir, k: save(fold_dir, None))


def losses_for(cfg: RunConfig, task: TaskData, train_ex: list[Example], teacher, device) -> tuple[nn.Module, nn.Module]:
    """(dev loss, training loss). Dev is scored with the loss as written; training may weigh a sum's terms
    adaptively (train/loss_weighting.py) and add a teacher's term."""
    loss_fn = loss_for(cfg.loss, task.kind, task.num_labels, label_array(task, train_ex)).to(device)
    train_loss = adaptive_loss(cfg.loss, loss_fn).to(device)
    if teacher is not None:
        train_loss = DistillLoss(train_loss, task.kind == MULTI_LABEL, teacher.alpha, teacher.temperature).to(device)
    return loss_fn, train_loss


def bi_encoder(model: ModelSettings, kind: str) -> bool:
    """Whether the run scores multiple choice with a bi-encoder (its features then hold each text alone)."""
    if kind != MULTIPLE_CHOICE or model.model == "ffnn":
        return False
    return choice_scorer_for(model.model, model.choice_scorer) == "bi"


def features_for(cfg: RunConfig, task: TaskData, tokenizer, tokenized: dict | None) -> Callable[[list], list[dict]]:
    """examples -> features: those tokenized already (`tokenized`, by id), the others tokenized now."""
    bi, known = bi_encoder(cfg.model, task.kind), tokenized or {}
    d, cache = cfg.data, None  # the token cache: opened (its shards read) at the first miss, kept for later calls

    def featurize(examples: list[Example]) -> list[dict]:
        nonlocal cache
        missing = [ex for ex in examples if id(ex) not in known]
        if missing and cache is None:
            cache = open_cache(cache_folder(d.token_cache), tokenizer, task.kind, d.max_length, bi, d.window_overlap())
        fresh = tokenize(missing, tokenizer, task.kind, d.max_length, bi, d.window_overlap(), cache)
        fresh = dict(zip(map(id, missing), fresh))
        return [known[id(ex)] if id(ex) in known else fresh[id(ex)] for ex in examples]

    return featurize


def training_features(cfg: RunConfig, task: TaskData, examples, features: list[dict], teacher, device) -> list[dict]:
    """The training features: with a teacher, each label joined to the teacher's probabilities (before oversampling,
    which repeats features by index); multi-label rare labels oversampled."""
    if teacher is not None:
        soft = teacher.targets_for(task, examples, device)
        features = [f | {"label": with_soft_targets(f["label"], p)} for f, p in zip(features, soft)]
    if cfg.data.oversample_rare and task.kind == MULTI_LABEL:
        rows = oversample_rare(label_array(task, examples), cfg.data.oversample_rare, cfg.seed)
        features = [features[i] for i in rows]
    return features


def build_model(m: ModelSettings, task: TaskData, tokenizer) -> nn.Module:
    """The checkpoint (or the bag-of-embeddings baseline) with the task's head and the model settings' options."""
    head = "multiple_choice" if task.kind == MULTIPLE_CHOICE else "sequence"
    num_labels = None if head == "multiple_choice" else task.num_labels
    if m.model == "ffnn":
        return build_ffnn(len(tokenizer), num_labels or 1, head, tokenizer.pad_token_id)
    model = load_model(m.model, num_labels, head, quantize=m.quantize, pooling=m.pooling, choice_scorer=m.choice_scorer)
    model.in_batch_negatives = m.in_batch_negatives
    if model.hf_config.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
        # Saved with the model so transformers, which pools at the last non-pad token, reads the same pad id.
        log.warning(
            "%s defines no pad token in its config: using the tokenizer's (id %d)", m.model, tokenizer.pad_token_id
        )
        model.hf_config["pad_token_id"] = tokenizer.pad_token_id
    if m.grad_checkpointing:
        for module in model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True
    if m.compile:  # in place: the module and its state_dict keys stay as they are (no `_orig_mod.` prefix)
        model.compile(dynamic=True)
    if m.adapter.lora_r:
        add_lora(model, m.adapter)
    return model


def score(cfg: RunConfig, kind: str, model: nn.Module, features: list[dict], collate, device) -> np.ndarray:
    """Probabilities as a run evaluates: batches of twice the training batch (no activations kept for backward).
    Under torch.distributed each rank scores a shard (under FSDP all of it) and every rank gets all scores."""
    batch = cfg.data.batch_size * 2
    return gathered_scores(
        lambda f: predict_scores(model, f, collate, kind, batch, device, cfg.loop.precision),
        features,
        every_rank=is_sharded(model),
    )


def dev_evaluator(cfg: RunConfig, task: TaskData, dev_ex, dev_f, collate, loss_fn, device):
    """fit's evaluate: the dev metrics and loss, with the dev probabilities as the payload fit keeps for the best."""
    label_dtype = torch.float32 if task.kind == MULTI_LABEL else torch.long
    dev_labels = torch.as_tensor(label_array(task, dev_ex), dtype=label_dtype, device=device)
    batch, precision = cfg.data.batch_size * 2, cfg.loop.precision

    def evaluate(m: nn.Module) -> tuple[dict, np.ndarray]:
        logits = gathered_scores(  # distributed: each rank a shard, every rank all of them
            lambda f: predict_logits(m, f, collate, batch, device, precision, desc="eval"),
            dev_f,
            every_rank=is_sharded(m),
        )
        scores = probabilities(logits, task.kind)
        rep = task_report(task, dev_ex, scores, cfg.eval.threshold)
        with torch.no_grad():
            loss = float(loss_fn(torch.as_tensor(logits, device=device), dev_labels))
        return selection_metrics(task.kind, rep) | {"loss": loss}, scores

    return evaluate


def _generative(cfg: RunConfig, task, train_ex, dev_ex, tokenizer, out: Path, device, resume: bool, lm) -> Tuned:
    """`head` generative: the instruct decoder asked zero- or few-shot, or instruction-tuned first (instruct.py)."""
    asked = instruct.ask_and_tune(cfg, task, train_ex, dev_ex, tokenizer, out, device, resume=resume, lm=lm)
    answerer = asked.answerer

    def save(run_dir: Path, thresholds: dict | None) -> None:
        if cfg.loop.epochs > 0 and is_main():  # nothing trained: nothing to save
            instruct.save_generative(run_dir, answerer, thresholds)

    def save_fold(run_dir: Path, fold_dir: Path, k: int) -> None:
        """Fold 0's merged model is the run's model/ (with generative.json); each fold keeps its LoRA adapter."""
        if k == 0:
            save(run_dir, None)
        if cfg.loop.epochs > 0 and cfg.model.adapter.lora_r and is_main():
            save_adapter_dir(fold_dir / "adapter", answerer.model)

    return Tuned(
        answerer.model,
        asked.summary,
        asked.dev_scores,
        answerer.answers,
        save,
        save_fold,
        dev_generation=asked.dev_generation,
        stats=answerer.stats,
        prompt_example=asked.prompt_example,
        trained_on=asked.trained_on,
    )
