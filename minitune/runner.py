"""`run.py train`: task -> tokenizer -> features -> model -> loop -> metrics, thresholds -> report and model/.

Output directory: config.json (resolved config), metrics.jsonl, results.json, report.txt, checkpoint/ (for
--resume), best.safetensors, and model/ in the Hub layout (config.json, model.safetensors, tokenizer files,
thresholds.json for multi-label) that minitune.load_model and transformers both load. Recipe-MPR runs its five
folds in fold0/ .. fold4/ and reports test accuracy over all folds; model/ holds fold 0's model.

Everything a user can get wrong (flags, files, model name, metric) is checked before the output directory is
written to, so a mistake costs seconds and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_dir, atomic_write_text
from .config import RunConfig, dump, print_config, resume_signature
from .data.batching import (
    BucketedBatchSampler,
    RandomBatchSampler,
    TokenBudgetBatchSampler,
    collate,
    length_of,
)
from .data.features import oversample_rare, tokenize
from .data.tasks import (
    MULTI_LABEL,
    MULTIPLE_CHOICE,
    TaskData,
    label_array,
    load_eval_file,
    load_task,
)
from .errors import ConfigError, MinituneError
from .eval.metrics import classification_report
from .eval.report import format_report, write_results
from .eval.thresholds import tune_thresholds
from .models.decoder import MODEL_TYPES as DECODER_TYPES
from .train.amp import autocast_context
from .train.checkpoint import check_resumable
from .train.loop import TrainData, fit
from .train.losses import balanced_class_weights, balanced_pos_weight, build_loss

log = logging.getLogger("minitune")

# Metrics --metric may select on, per task kind (all: higher is better).
METRICS = {
    "single_label": ("macro_f1", "accuracy", "micro_f1", "weighted_f1", "binary_f1"),
    "multi_label": ("macro_f1", "jaccard", "micro_f1", "weighted_f1", "subset_accuracy"),
    "multiple_choice": ("accuracy", "macro_f1"),
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def make_sampler(cfg: RunConfig, features: list[dict], seed: int):
    lengths = [length_of(f) for f in features]
    if cfg.max_tokens:
        return TokenBudgetBatchSampler(lengths, cfg.max_tokens, shuffle=True, seed=seed)
    if cfg.padding == "bucketed":
        return BucketedBatchSampler(lengths, cfg.batch_size, shuffle=True, seed=seed)
    return RandomBatchSampler(lengths, cfg.batch_size, shuffle=True, seed=seed)


def make_collate(padding: str, max_length: int, pad_id: int, padding_side: str = "right"):
    mode = "fixed" if padding == "fixed" else "dynamic"
    return lambda feats: collate(feats, pad_id, mode, max_length, padding_side)


@torch.no_grad()
def predict_scores(model, features: list[dict], collate_fn, kind: str, batch_size: int, device, precision: str):
    """Probabilities (N, C) in the features' order; batches sorted by length so padding stays small."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: length_of(features[i]))
    out = [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_fn([features[i] for i in idx]).items()}
        with autocast_context(precision, device.type):
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).float()
        probs = torch.sigmoid(logits) if kind == MULTI_LABEL else torch.softmax(logits, dim=-1)
        for i, p in zip(idx, probs.cpu().numpy()):
            out[i] = p
    return np.stack(out)


def run_scores(cfg: RunConfig, task: TaskData, model, features: list[dict], collate_fn, device) -> np.ndarray:
    """predict_scores as a run evaluates: twice the training batch (no activations are kept for backward)."""
    return predict_scores(model, features, collate_fn, task.kind, cfg.batch_size * 2, device, cfg.precision)


def check_max_length(cfg: RunConfig, hf_config: dict) -> None:
    """A --max-length beyond the position table would index past it in the middle of training."""
    positions = hf_config.get("max_position_embeddings")
    if positions is None or hf_config.get("model_type") in DECODER_TYPES:
        return  # RoPE has no table; its limit is the tokenizer's
    usable = positions - (hf_config.get("pad_token_id", 0) + 1 if hf_config.get("model_type") != "bert" else 0)
    if hf_config.get("model_type") in ("roberta", "xlm-roberta") and cfg.max_length > usable:
        raise ConfigError(f"--max-length {cfg.max_length} exceeds {cfg.model}'s {usable} positions; use at most "
                          f"{usable}")
    if cfg.max_length > positions:
        raise ConfigError(f"--max-length {cfg.max_length} exceeds {cfg.model}'s {positions} positions; use at most "
                          f"{positions}")


def build_model(cfg: RunConfig, task: TaskData, tokenizer):
    from . import load_model
    from .models.ffnn import build_ffnn

    head = "multiple_choice" if task.kind == MULTIPLE_CHOICE else "sequence"
    num_labels = None if head == "multiple_choice" else task.num_labels
    if cfg.model == "ffnn":
        return build_ffnn(len(tokenizer), num_labels or 1, head, tokenizer.pad_token_id)
    model = load_model(cfg.model, num_labels=num_labels, head=head, quantize=cfg.quantize)
    if model.hf_config.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
        # Saved with the model so transformers, which pools at the last non-pad token, reads the same pad id.
        log.warning("%s defines no pad token in its config: using the tokenizer's (id %d)", cfg.model,
                    tokenizer.pad_token_id)
        model.hf_config["pad_token_id"] = tokenizer.pad_token_id
    if cfg.grad_checkpointing:
        for m in model.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = True
    if cfg.lora_r:
        from .adapters import apply_adapters

        apply_adapters(model, cfg)
    return model


def build_loss_for(cfg: RunConfig, task: TaskData, train_ex):
    """The loss; class weights come from the original training labels (before any oversampling)."""
    weights = pos_weight = None
    if cfg.class_weights == "balanced":
        labels = label_array(task, train_ex)
        if task.kind == MULTI_LABEL:
            pos_weight = balanced_pos_weight(labels)
        else:
            weights = balanced_class_weights(labels, task.num_labels)
    kind = "single_label" if task.kind == MULTIPLE_CHOICE else task.kind
    return build_loss(cfg.loss or "", kind, task.num_labels, class_weights=weights, pos_weight=pos_weight,
                      label_smoothing=cfg.label_smoothing, gamma=cfg.focal_gamma, gamma_neg=cfg.asl_gamma_neg,
                      gamma_pos=cfg.asl_gamma_pos, clip=cfg.asl_clip)


def report_for(task: TaskData, examples, scores, cfg: RunConfig, thresholds=None) -> dict:
    groups = [ex.meta.get("query_types", []) for ex in examples] if task.kind == MULTIPLE_CHOICE else None
    names = task.label_names if task.kind != MULTIPLE_CHOICE else [f"choice_{i}" for i in range(scores.shape[1])]
    return classification_report(task.kind, label_array(task, examples), scores, names, threshold=cfg.threshold,
                                 tuned_thresholds=thresholds, groups=groups)


def train_once(cfg: RunConfig, task: TaskData, train_ex, dev_ex, tokenizer, out_dir: Path, device,
               tokenized: dict | None = None):
    """Fine-tune one model on train_ex, selecting on dev_ex; returns (model, loop state, dev scores, collate).
    `tokenized` (id(example) -> features) lets the folds of one run share a single tokenization."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()

    def features(examples):
        if tokenized is not None:
            return [tokenized[id(ex)] for ex in examples]
        return tokenize(examples, tokenizer, task.kind, cfg.max_length)

    train_f, dev_f = features(train_ex), features(dev_ex)
    if cfg.oversample_rare and task.kind == MULTI_LABEL:
        train_f = [train_f[i] for i in oversample_rare(label_array(task, train_ex), cfg.oversample_rare, cfg.seed)]
    log.info("features for %d train / %d dev examples in %.1fs", len(train_f), len(dev_f), time.perf_counter() - t0)
    model = build_model(cfg, task, tokenizer).to(device)
    collate_fn = make_collate(cfg.padding, cfg.max_length, tokenizer.pad_token_id)
    loss_fn = build_loss_for(cfg, task, train_ex).to(device)

    best: dict = {}

    def evaluate(m) -> dict:
        scores = run_scores(cfg, task, m, dev_f, collate_fn, device)
        rep = report_for(task, dev_ex, scores, cfg)
        if not best or rep[cfg.metric] > best["value"]:  # the loop keeps these weights: keep their scores too
            best.update(value=rep[cfg.metric], scores=scores)
        return {k: rep[k] for k in METRICS[task.kind] if k in rep}

    data = TrainData(train_f, make_sampler(cfg, train_f, cfg.seed), collate_fn)
    state = fit(model, loss_fn, data, evaluate, cfg, out_dir, device)
    if "scores" in best and not cfg.resume:
        scores = best["scores"]  # the best evaluation already scored the weights fit() restored
    else:  # resumed: the best evaluation may have happened in an earlier process
        scores = run_scores(cfg, task, model, dev_f, collate_fn, device)
    return model, dataclasses.asdict(state) | {"seconds": round(time.perf_counter() - t0, 1)}, scores, collate_fn


def choose_thresholds(task: TaskData, dev_ex, scores, cfg: RunConfig) -> dict:
    """Per-label thresholds tuned on dev (for per-label F1), kept for prediction only if they also do at least
    as well as the fixed threshold on the run's --metric; both are reported either way."""
    tuned = tune_thresholds(label_array(task, dev_ex), scores)
    rep = report_for(task, dev_ex, scores, cfg, tuned)
    use = "tuned" if rep["tuned"][cfg.metric] >= rep[cfg.metric] else "fixed"
    return {"threshold": cfg.threshold, "per_label": dict(zip(task.label_names, map(float, tuned))), "use": use,
            "metric": cfg.metric}


def save_model(model, tokenizer, task: TaskData, out_dir: Path, thresholds: dict | None = None) -> None:
    from .adapters import save_adapter_dir
    from .lora import lora_modules

    problem = {MULTI_LABEL: "multi_label_classification", MULTIPLE_CHOICE: None}.get(
        task.kind, "single_label_classification")

    def write_model(target: Path) -> None:
        model.save_pretrained(target, label_names=task.label_names if task.kind != MULTIPLE_CHOICE else None,
                              problem_type=problem)
        tokenizer.save_pretrained(target)
        if thresholds is not None:
            atomic_write_text(target / "thresholds.json", json.dumps(thresholds, indent=2) + "\n")

    # Whole directories, swapped in: nothing from an earlier run in the same --output-dir survives beside them.
    atomic_dir(out_dir / "model", write_model)
    if lora_modules(model):
        base = getattr(model, "name_or_path", None)
        atomic_dir(out_dir / "adapter", lambda target: save_adapter_dir(model, target, base))
    elif (out_dir / "adapter").is_dir():
        shutil.rmtree(out_dir / "adapter")  # an earlier LoRA run's adapter does not belong to these weights


def subsample(examples: list, n: int | None, seed: int | None) -> list:
    if not n or n >= len(examples):
        return list(examples)
    if seed is None:
        return list(examples[:n])
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
    return [examples[i] for i in keep]


def holdout(task: TaskData, examples: list, share: float, seed: int) -> tuple[list, list]:
    """Split examples into (train, held-out), stratified by label (iteratively for multi-label)."""
    from .data.splits import multilabel_holdout, stratified_holdout

    split = multilabel_holdout if task.kind == MULTI_LABEL else stratified_holdout
    tr, te = split(label_array(task, examples), share, seed)
    return [examples[i] for i in tr], [examples[i] for i in te]


def _check_inputs(cfg: RunConfig):
    """Load and check everything that can be wrong before anything is written: task files, the metric, the
    model and tokenizer, --test-file, --max-length. Returns (task, tokenizer, test examples or None)."""
    from . import load_tokenizer
    from .data.tasks import resolve_data_dir
    from .hub import resolve_model
    from .modeling import read_config

    task = load_task(cfg.task, resolve_data_dir(cfg.data_dir), seed=cfg.seed, train_file=cfg.train_file,
                     dev_file=cfg.dev_file, label_names=cfg.label_names, **({} if cfg.task != "custom" else dict(
                         text_col=cfg.text_col, label_col=cfg.label_col, pair_col=cfg.pair_col)))
    if cfg.metric not in METRICS[task.kind]:
        raise ConfigError(f"--metric {cfg.metric!r} is not a selection metric for {task.kind} tasks; choose one of "
                          f"{', '.join(METRICS[task.kind])}")
    build_loss_for(cfg, task, task.train)  # a loss that does not fit the task fails here, not after tokenizing
    if cfg.max_tokens and cfg.max_tokens < cfg.max_length:
        raise ConfigError(f"--max-tokens {cfg.max_tokens} is below --max-length {cfg.max_length}: a batch must hold "
                          "the longest example; raise --max-tokens or lower --max-length")
    test_ex = load_eval_file(task, cfg.test_file) if cfg.test_file else None
    name = "minilm" if cfg.model == "ffnn" else cfg.model
    path = resolve_model(name)
    hf_config = read_config(path) if path.suffix.lower() != ".gguf" and cfg.model != "ffnn" else None
    if hf_config is not None:
        check_max_length(cfg, hf_config)
    if cfg.padding is None:  # encoders unpad padding-heavy batches; decoders have no such path
        family = "llama" if path.suffix.lower() == ".gguf" else (hf_config or {}).get("model_type")
        cfg.padding = "bucketed" if family in DECODER_TYPES else "dynamic"
    if cfg.resume:
        fold_dirs = sorted(Path(cfg.output_dir).glob("fold*")) if task.folds else [Path(cfg.output_dir)]
        for d in [d for d in fold_dirs if (d / "checkpoint").is_dir()] or [Path(cfg.output_dir)]:
            check_resumable(d / "checkpoint", resume_signature(cfg))
    tokenizer = load_tokenizer(name)
    if tokenizer.pad_token_id is None:
        log.warning("%s has no pad token: using its eos token for padding", cfg.model)
        tokenizer.set_pad_to_eos()
    return task, tokenizer, test_ex


def run_train(cfg: RunConfig) -> dict:
    device = pick_device(cfg.device)
    task, tokenizer, test_ex = _check_inputs(cfg)
    out = Path(cfg.output_dir)
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    print_config(cfg)
    atomic_write_text(out / "config.json", dump(cfg) + "\n")
    t0 = time.perf_counter()
    try:
        if task.kind == MULTIPLE_CHOICE and task.folds:
            results = _run_folds(cfg, task, tokenizer, test_ex, out, device)
        else:
            results = _run_holdout(cfg, task, tokenizer, test_ex, out, device)
    except MinituneError:
        # A mistake only the model or the features reveal (a --lora-targets pattern that matches nothing): before
        # any checkpoint, the directory this run made holds nothing worth keeping.
        if fresh and not any(out.glob("**/checkpoint")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    results["train"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results = {"task": cfg.task, "model": cfg.model, "config": json.loads(dump(cfg)), **results}
    write_results(out / "results.json", results)
    text = format_report(results)
    atomic_write_text(out / "report.txt", text)
    print(text)
    return results


def _run_holdout(cfg: RunConfig, task: TaskData, tokenizer, test_ex, out: Path, device) -> dict:
    train_ex = subsample(task.train, cfg.max_train_samples, cfg.seed)
    dev_ex = subsample(task.dev, cfg.max_eval_samples, None)
    if not dev_ex:  # no dev file: hold out 10% of train, stratified, to select on
        train_ex, dev_ex = holdout(task, train_ex, 0.1, cfg.seed)
        log.info("no dev file: holding out %d of %d training examples for selection", len(dev_ex),
                 len(dev_ex) + len(train_ex))
    model, state, scores, collate_fn = train_once(cfg, task, train_ex, dev_ex, tokenizer, out, device)
    thresholds = choose_thresholds(task, dev_ex, scores, cfg) if task.kind == MULTI_LABEL else None
    tuned = np.array(list(thresholds["per_label"].values())) if thresholds else None
    results = {"train": state, "dev": report_for(task, dev_ex, scores, cfg, tuned)}
    if thresholds is not None:
        results["thresholds"] = thresholds
    if test_ex is not None:
        test_f = tokenize(test_ex, tokenizer, task.kind, cfg.max_length)
        test_scores = run_scores(cfg, task, model, test_f, collate_fn, device)
        results["test"] = report_for(task, test_ex, test_scores, cfg, tuned)
    save_model(model, tokenizer, task, out, thresholds)
    return results


def _run_folds(cfg: RunConfig, task: TaskData, tokenizer, test_ex, out: Path, device) -> dict:
    """Recipe-MPR's 5-fold protocol: train on each fold's train, select on its val, predict its test. A further
    --test-file is scored by the mean of the fold models' probabilities (their ensemble)."""
    folds = task.folds[: cfg.folds] if cfg.folds else task.folds
    if not cfg.resume:  # an earlier run here with more folds: its extra fold directories are not this run's
        for stale in out.glob("fold*"):
            if stale.is_dir() and stale.name[4:].isdigit() and int(stale.name[4:]) >= len(folds):
                shutil.rmtree(stale)
    fold_ex, test_scores, per_fold, file_scores = [], [], [], []
    tokenized = dict(zip(map(id, task.train), tokenize(task.train, tokenizer, task.kind, cfg.max_length)))
    file_f = tokenize(test_ex, tokenizer, task.kind, cfg.max_length) if test_ex else None
    for k, (tr, va, te) in enumerate(folds):
        fold_train = [task.train[i] for i in tr]
        if va:
            fold_val = [task.train[i] for i in va]
        else:  # the published folds leave validation empty: select on 10% of the fold's training part
            fold_train, fold_val = holdout(task, fold_train, 0.1, cfg.seed)
        fold_train = subsample(fold_train, cfg.max_train_samples, cfg.seed)
        fold_val = subsample(fold_val, cfg.max_eval_samples, None)  # caps selection only; each fold's test is whole
        log.info("fold %d/%d: %d train, %d val%s, %d test", k + 1, len(folds), len(fold_train), len(fold_val),
                 "" if va else " (10% of the fold's train part: the fold file gives none)", len(te))
        fold_dir = out / f"fold{k}"
        # On --resume, folds that never started begin afresh; finished ones resume into "done" at once.
        fold_cfg = dataclasses.replace(cfg, resume=cfg.resume if (fold_dir / "checkpoint").is_dir() else None)
        model, state, _, collate_fn = train_once(fold_cfg, task, fold_train, fold_val, tokenizer, fold_dir, device,
                                                 tokenized)
        ex = [task.train[i] for i in te]
        scores = run_scores(cfg, task, model, [tokenized[id(e)] for e in ex], collate_fn, device)
        accuracy = float((scores.argmax(1) == label_array(task, ex)).mean())
        per_fold.append({"fold": k, **state, "test_accuracy": accuracy})
        fold_ex += ex
        test_scores.append(scores)
        if file_f is not None:
            file_scores.append(run_scores(cfg, task, model, file_f, collate_fn, device))
        if k == 0:
            save_model(model, tokenizer, task, out)
    scores = np.concatenate(test_scores)
    first = np.zeros_like(scores)
    first[:, 0] = 1.0  # the always-pick-the-first-option baseline, after the seeded option shuffle
    results = {"train": {"folds": per_fold}, "test": report_for(task, fold_ex, scores, cfg),
               "baseline_first_option": report_for(task, fold_ex, first, cfg)}
    if file_scores:
        results["test_file"] = report_for(task, test_ex, np.mean(file_scores, axis=0), cfg)
    return results
