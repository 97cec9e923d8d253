"""`run.py train`: task -> tokenizer -> features -> model -> loop -> metrics, thresholds -> report and model/.

Output directory: config.json (resolved config), metrics.jsonl, results.json, report.txt, checkpoint/ (for
--resume), best.safetensors, and model/ in the Hub layout (config.json, model.safetensors, tokenizer files,
thresholds.json for multi-label) that minitune.load_model and transformers both load. Recipe-MPR runs its five
folds in fold0/ .. fold4/ and reports test accuracy over all folds; model/ holds fold 0's model.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, dump, print_config
from .data.batching import BucketedBatchSampler, RandomBatchSampler, TokenBudgetBatchSampler, collate, length_of
from .data.features import oversample_rare, tokenize
from .data.tasks import MULTI_LABEL, MULTIPLE_CHOICE, TaskData, label_array, load_eval_file, load_task
from .errors import ConfigError
from .eval.metrics import classification_report
from .eval.report import format_report, write_results
from .eval.thresholds import tune_thresholds
from .modeling import _atomic_write
from .train.amp import autocast_context
from .train.loop import TrainData, fit
from .train.losses import balanced_class_weights, balanced_pos_weight, build_loss

log = logging.getLogger("minitune")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def make_sampler(cfg: RunConfig, features: list[dict], seed: int):
    lengths = [length_of(f) for f in features]
    if cfg.max_tokens:
        return TokenBudgetBatchSampler(lengths, cfg.max_tokens, shuffle=True, seed=seed)
    if cfg.padding == "bucketed":
        return BucketedBatchSampler(lengths, cfg.batch_size, shuffle=True, seed=seed)
    return RandomBatchSampler(lengths, cfg.batch_size, shuffle=True, seed=seed)


def make_collate(cfg: RunConfig, pad_id: int, padding_side: str = "right"):
    padding = "fixed" if cfg.padding == "fixed" else "dynamic"
    return lambda feats: collate(feats, pad_id, padding, cfg.max_length, padding_side)


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


def build_model(cfg: RunConfig, task: TaskData, tokenizer):
    from .models.ffnn import build_ffnn
    from . import load_model

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


def build_loss_for(cfg: RunConfig, task: TaskData, train_features: list[dict]):
    kind = task.kind
    weights = pos_weight = None
    if cfg.class_weights == "balanced":
        labels = np.array([f["label"] for f in train_features])
        if kind == MULTI_LABEL:
            pos_weight = balanced_pos_weight(labels)
        else:
            weights = balanced_class_weights(labels, task.num_labels)
    return build_loss(cfg.loss or "", "single_label" if kind == MULTIPLE_CHOICE else kind, task.num_labels,
                      class_weights=weights, pos_weight=pos_weight, label_smoothing=cfg.label_smoothing,
                      gamma=cfg.focal_gamma, gamma_neg=cfg.asl_gamma_neg, gamma_pos=cfg.asl_gamma_pos,
                      clip=cfg.asl_clip)


def labels_of(task: TaskData, examples) -> np.ndarray:
    return label_array(task, examples)


def report_for(task: TaskData, examples, scores, cfg: RunConfig, thresholds=None) -> dict:
    groups = [ex.meta.get("query_types", []) for ex in examples] if task.kind == MULTIPLE_CHOICE else None
    names = task.label_names if task.kind != MULTIPLE_CHOICE else [f"choice_{i}" for i in range(scores.shape[1])]
    return classification_report(task.kind, labels_of(task, examples), scores, names, threshold=cfg.threshold,
                                  tuned_thresholds=thresholds, groups=groups)


def train_once(cfg: RunConfig, task: TaskData, train_ex, dev_ex, tokenizer, out_dir: Path, device):
    """Fine-tune one model on train_ex, selecting on dev_ex; returns (model, loop state, dev scores, collate)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    train_f = tokenize(train_ex, tokenizer, task.kind, cfg.max_length)
    dev_f = tokenize(dev_ex, tokenizer, task.kind, cfg.max_length)
    if cfg.oversample_rare and task.kind == MULTI_LABEL:
        keep = oversample_rare(labels_of(task, train_ex), cfg.oversample_rare, cfg.seed)
        train_f = [train_f[i] for i in keep]
    log.info("tokenized %d train / %d dev examples in %.1fs", len(train_f), len(dev_f), time.perf_counter() - t0)
    model = build_model(cfg, task, tokenizer).to(device)
    collate_fn = make_collate(cfg, tokenizer.pad_token_id)
    loss_fn = build_loss_for(cfg, task, train_f).to(device)

    def evaluate(m) -> dict:
        scores = predict_scores(m, dev_f, collate_fn, task.kind, cfg.batch_size * 2, device, cfg.precision)
        rep = report_for(task, dev_ex, scores, cfg)
        metrics = {k: v for k, v in rep.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if cfg.metric not in metrics:
            raise ConfigError(f"--metric {cfg.metric!r} is not reported for {task.kind}; choose one of "
                              f"{', '.join(sorted(metrics))}")
        return metrics

    data = TrainData(train_f, make_sampler(cfg, train_f, cfg.seed), collate_fn)
    state = fit(model, loss_fn, data, evaluate, cfg, out_dir, device)
    scores = predict_scores(model, dev_f, collate_fn, task.kind, cfg.batch_size * 2, device, cfg.precision)
    state_dict = asdict(state) | {"seconds": round(time.perf_counter() - t0, 1)}
    return model, state_dict, scores, collate_fn


def save_model(model, tokenizer, task: TaskData, out_dir: Path, thresholds=None) -> None:
    target = out_dir / "model"
    problem = "multi_label_classification" if task.kind == MULTI_LABEL else (
        "single_label_classification" if task.kind != MULTIPLE_CHOICE else None)
    model.save_pretrained(target, label_names=task.label_names if task.kind != MULTIPLE_CHOICE else None,
                          problem_type=problem)
    tokenizer.save_pretrained(target)
    from .adapters import save_adapter_dir

    save_adapter_dir(model, out_dir, getattr(model, "name_or_path", None))
    if thresholds is not None:
        data = {"threshold": None, "per_label": dict(zip(task.label_names, map(float, thresholds)))}
        _atomic_write(target / "thresholds.json", lambda p: Path(p).write_text(json.dumps(data, indent=2)))


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

    labels = labels_of(task, examples)
    split = multilabel_holdout if task.kind == MULTI_LABEL else stratified_holdout
    tr, te = split(labels, share, seed)
    return [examples[i] for i in tr], [examples[i] for i in te]


def run_train(cfg: RunConfig) -> dict:
    from . import load_tokenizer
    from .data.tasks import resolve_data_dir

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print_config(cfg)
    _atomic_write(out / "config.json", lambda p: Path(p).write_text(dump(cfg) + "\n"))
    device = pick_device(cfg.device)
    task = load_task(cfg.task, resolve_data_dir(cfg.data_dir), seed=cfg.seed, train_file=cfg.train_file,
                     dev_file=cfg.dev_file, **_custom_columns(cfg))
    if cfg.metric is None:
        cfg.metric = "accuracy" if task.kind == MULTIPLE_CHOICE else "macro_f1"
    tokenizer = load_tokenizer("minilm" if cfg.model == "ffnn" else cfg.model)
    if tokenizer.pad_token_id is None:
        log.warning("%s has no pad token: using its eos token for padding", cfg.model)
        tokenizer.set_pad_to_eos()
    t0 = time.perf_counter()
    if task.kind == MULTIPLE_CHOICE and task.folds:
        results = _run_folds(cfg, task, tokenizer, out, device)
    else:
        results = _run_holdout(cfg, task, tokenizer, out, device)
    results["train"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results = {"task": cfg.task, "model": cfg.model, "config": json.loads(dump(cfg)), **results}
    write_results(out / "results.json", results)
    text = format_report(results)
    _atomic_write(out / "report.txt", lambda p: Path(p).write_text(text + "\n"))
    print(text)
    return results


def _custom_columns(cfg: RunConfig) -> dict:
    if cfg.task != "custom":
        return {}
    return dict(text_col=cfg.text_col, label_col=cfg.label_col, pair_col=cfg.pair_col)


def _run_holdout(cfg: RunConfig, task: TaskData, tokenizer, out: Path, device) -> dict:
    train_ex = subsample(task.train, cfg.max_train_samples, cfg.seed)
    dev_ex = subsample(task.dev, cfg.max_eval_samples, None)
    if not dev_ex:  # no dev file: hold out 10% of train, stratified, to select on
        train_ex, dev_ex = holdout(task, train_ex, 0.1, cfg.seed)
        log.info("no dev file: holding out %d of %d training examples for selection", len(dev_ex),
                 len(dev_ex) + len(train_ex))
    model, state, scores, collate_fn = train_once(cfg, task, train_ex, dev_ex, tokenizer, out, device)
    thresholds = tune_thresholds(labels_of(task, dev_ex), scores) if task.kind == MULTI_LABEL else None
    results = {"train": state, "dev": report_for(task, dev_ex, scores, cfg, thresholds)}
    if thresholds is not None:
        results["thresholds"] = dict(zip(task.label_names, map(float, thresholds)))
    if cfg.test_file:
        test_ex = load_eval_file(task, cfg.test_file)
        test_f = tokenize(test_ex, tokenizer, task.kind, cfg.max_length)
        test_scores = predict_scores(model, test_f, collate_fn, task.kind, cfg.batch_size * 2, device, cfg.precision)
        results["test"] = report_for(task, test_ex, test_scores, cfg, thresholds)
    save_model(model, tokenizer, task, out, thresholds)
    return results


def _run_folds(cfg: RunConfig, task: TaskData, tokenizer, out: Path, device) -> dict:
    """Recipe-MPR's 5-fold protocol: train on each fold's train, select on its val, predict its test."""
    folds = task.folds[: cfg.folds] if cfg.folds else task.folds
    test_ex, test_scores, per_fold = [], [], []
    for k, (tr, va, te) in enumerate(folds):
        log.info("fold %d/%d: %d train, %d val, %d test", k + 1, len(folds), len(tr), len(va), len(te))
        fold_train = [task.train[i] for i in tr]
        if va:
            fold_val = [task.train[i] for i in va]
        else:  # the published folds leave validation empty: select on 10% of the fold's training part
            fold_train, fold_val = holdout(task, fold_train, 0.1, cfg.seed)
        fold_train = subsample(fold_train, cfg.max_train_samples, cfg.seed)
        model, state, _, collate_fn = train_once(cfg, task, fold_train, fold_val, tokenizer, out / f"fold{k}", device)
        ex = [task.train[i] for i in te]
        scores = predict_scores(model, tokenize(ex, tokenizer, task.kind, cfg.max_length), collate_fn, task.kind,
                                cfg.batch_size * 2, device, cfg.precision)
        per_fold.append({"fold": k, **state, "test_accuracy": float((scores.argmax(1) == labels_of(task, ex)).mean())})
        test_ex += ex
        test_scores.append(scores)
        if k == 0:
            save_model(model, tokenizer, task, out)
    scores = np.concatenate(test_scores)
    first = np.zeros_like(scores)
    first[:, 0] = 1.0  # the always-pick-the-first-option baseline, after the seeded option shuffle
    return {"train": {"folds": per_fold}, "test": report_for(task, test_ex, scores, cfg),
            "baseline_first_option": report_for(task, test_ex, first, cfg)}
