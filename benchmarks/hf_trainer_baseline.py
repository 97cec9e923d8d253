#!/usr/bin/env python
"""The Hugging Face `transformers.Trainer` doing the same fine-tuning run as `run.py train`, as a baseline.

    python benchmarks/hf_trainer_baseline.py --task humor --model minilm --data-dir ../shared/data \
        --output-dir /tmp/hf-humor --epochs 2 --max-train-samples 2000

It takes run.py's training flags and resolves them with minitune's own `parse_config`, so the task defaults
(TASK_DEFAULTS, minitune/config/defaults.py) and every flag given land in both runs identically. What is shared
with minitune, so that only the training stack differs:
- data: `minitune.data.tasks.load_task` (same readers, same mojibake repair, same rows), the train subset from
  `minitune.data.splits.subsample` (same seed), the dev subset as the first --max-eval-samples examples;
- scoring: `minitune.eval.metrics.classification_report` on the probabilities (softmax, or sigmoid with
  score >= threshold for multi-label), and `minitune.eval.thresholds.tune_thresholds` for the tuned report.
What is the Trainer's own: tokenizer (`AutoTokenizer`, the checkpoint's tokenizer.json, truncation to
--max-length), `AutoModelForSequenceClassification` (problem_type multi_label_classification -> BCE for
multi-label), `DataCollatorWithPadding` on randomly sampled batches, its AdamW, schedule, label smoother,
gradient clipping, per-epoch evaluation and checkpointing, `load_best_model_at_end` on the same metric and
`EarlyStoppingCallback` with the same patience.

Two places where the numbers are set by hand to equal minitune's (both read in transformers 5.x' source):
- warmup: minitune warms up for ceil(warmup_ratio * total) steps, as the Trainer rounds a fractional
  warmup; the integer count is passed so both read the same number;
- layer-wise LR decay (--llrd, humor's default 0.95): the Trainer has no such option, so `LLRDTrainer`
  overrides `create_optimizer` to build the Trainer's own optimizer class and kwargs over LLRD parameter groups
  (head at lr, block i of L at lr * llrd^(L - i), embeddings at lr * llrd^(L + 1); decay on the Trainer's
  decay-parameter names). To compare without LLRD, pass `--no-llrd` here and `--llrd 1` to run.py (run.py
  has no flag that unsets a task's llrd default; 1.0 gives every group the same lr).

Writes OUTPUT_DIR/results.json: task, model, stack, config, train (steps, best, seconds, wall_seconds), dev
(classification_report dict, "tuned" nested for multi-label) and thresholds (multi-label); plus model/ and the
Trainer's checkpoints/.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace as Settings

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minitune.checkpoints.hub import resolve_model
from minitune.cli import parse_config
from minitune.config.validate import resolve_device
from minitune.data.splits import subsample
from minitune.data.tasks import MULTI_LABEL, SINGLE_LABEL, TaskData, load_task, resolve_data_dir
from minitune.eval.metrics import classification_report
from minitune.eval.thresholds import tune_thresholds
from minitune.train.amp import choose_precision

_LAYER = re.compile(r"\.layer\.(\d+)\.")


def check_supported(cfg: Settings) -> None:
    """Refuse options this baseline does not reproduce, rather than silently training something else."""
    unsupported = {
        "--task (humor, semeval, goemotions only)": cfg.task not in ("humor", "semeval", "goemotions"),
        "--loss (default ce / bce only)": cfg.loss not in (None, "", "ce", "bce"),
        "--class-weights": cfg.class_weights != "none",
        "--oversample-rare": bool(cfg.oversample_rare),
        "--max-tokens": cfg.max_tokens is not None,
        "--eval-every": cfg.eval_every is not None,
        "--scheduler plateau": cfg.scheduler == "plateau",
        "--precision fp16 (the Trainer has no fp16 on CPU)": cfg.precision == "fp16",
        "--lora-r / --quantize": bool(cfg.lora_r) or cfg.quantize is not None,
        "--resume": cfg.resume is not None,
        "--test-file": cfg.test_file is not None,
    }
    bad = [flag for flag, hit in unsupported.items() if hit]
    if bad:
        raise SystemExit(f"error: hf_trainer_baseline.py does not reproduce {', '.join(bad)}; drop them")


def encode(tokenizer, examples, kind: str, max_length: int) -> list[dict]:
    """Token ids (no padding: the collator pads per batch) and labels, in the examples' order."""
    enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=max_length)
    rows = []
    for i, ex in enumerate(examples):
        row = {k: enc[k][i] for k in enc}
        row["labels"] = [float(v) for v in ex.label] if kind == MULTI_LABEL else int(ex.label)
        rows.append(row)
    return rows


def llrd_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, llrd: float, decay_names: set[str]
) -> list[dict]:
    """AdamW groups keyed by (depth, decay): 0 = embeddings, i + 1 = block i, L + 1 = pooler and classifier."""
    num_layers = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = _LAYER.search(name)
        depth = 0 if "embeddings" in name else (int(match.group(1)) + 1 if match else num_layers + 1)
        decay = name in decay_names
        group = groups.setdefault(
            (depth, decay),
            {"params": [], "lr": lr * llrd ** (num_layers + 1 - depth), "weight_decay": weight_decay if decay else 0.0},
        )
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def make_trainer_class():
    from transformers import Trainer

    class LLRDTrainer(Trainer):
        """The stock Trainer, except that its optimizer gets layer-wise learning rates when `llrd` is set."""

        def __init__(self, *args, llrd: float | None = None, **kwargs):
            self.llrd = llrd
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model=None):
            if self.llrd is None or self.optimizer is not None:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups = llrd_groups(opt_model, self.args.learning_rate, self.args.weight_decay, self.llrd, decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer

    return LLRDTrainer


def probabilities(logits: np.ndarray, kind: str) -> np.ndarray:
    t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    return (torch.sigmoid(t) if kind == MULTI_LABEL else torch.softmax(t, dim=-1)).numpy()


def gold_labels(label_ids: np.ndarray, kind: str) -> np.ndarray:
    """The Trainer's gathered labels in minitune's label_array layout. They must be used, not the dev set's own
    order: under group_by_length, transformers 5 also orders *evaluation* batches by length, so its predictions
    come back permuted and only its gathered label_ids follow them."""
    return np.asarray(label_ids).astype(np.uint8 if kind == MULTI_LABEL else np.int64)


def metrics_fn(task: TaskData, threshold: float):
    """compute_metrics for the Trainer: minitune's report on the dev probabilities, numeric entries only."""

    def compute(eval_pred) -> dict:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        labels = gold_labels(eval_pred.label_ids, task.kind)
        report = classification_report(
            task.kind, labels, probabilities(logits, task.kind), task.label_names, threshold=threshold
        )
        return {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    return compute


def total_steps(cfg: Settings, n_train: int) -> int:
    """Optimizer steps as both stacks count them: ceil(ceil(n / batch) / accumulation) per epoch."""
    per_epoch = math.ceil(math.ceil(n_train / cfg.batch_size) / cfg.grad_accum)
    return cfg.max_steps or cfg.epochs * per_epoch


def training_arguments(cfg: Settings, out: Path, n_train: int, sampling: str = "random"):
    from transformers import TrainingArguments

    total = total_steps(cfg, n_train)
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        seed=cfg.seed,
        use_cpu=cfg.device == "cpu",
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=math.ceil(cfg.warmup_ratio * total),  # minitune's count, see the module docstring
        label_smoothing_factor=cfg.label_smoothing,
        max_grad_norm=cfg.clip_grad,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=cfg.metric,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=cfg.log_every,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy=sampling,  # "group_by_length": LengthGroupedSampler, the Trainer's padding cure
        bf16=cfg.precision == "bf16",  # autocast, as run.py's --precision bf16
    ), total


def load_data(cfg: Settings):
    task = load_task(cfg.task, resolve_data_dir(cfg.data_dir), seed=cfg.seed)
    train_ex = subsample(task.train, cfg.max_train_samples, cfg.seed)
    dev_ex = subsample(task.dev, cfg.max_eval_samples, None)
    return task, train_ex, dev_ex


def build_model(cfg: Settings, task: TaskData, model_dir: Path):
    from transformers import AutoModelForSequenceClassification

    problem = "multi_label_classification" if task.kind == MULTI_LABEL else "single_label_classification"
    return AutoModelForSequenceClassification.from_pretrained(
        str(model_dir),
        num_labels=task.num_labels,
        problem_type=problem,
        id2label=dict(enumerate(task.label_names)),
        label2id={n: i for i, n in enumerate(task.label_names)},
    )


def train(cfg: Settings, out: Path, check_tokens: bool, sampling: str = "random") -> dict:
    from transformers import AutoTokenizer, DataCollatorWithPadding, EarlyStoppingCallback, set_seed

    model_dir = resolve_model(cfg.model)
    task, train_ex, dev_ex = load_data(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    train_rows = encode(tokenizer, train_ex, task.kind, cfg.max_length)
    dev_rows = encode(tokenizer, dev_ex, task.kind, cfg.max_length)
    if check_tokens:
        compare_tokens(cfg, task, train_ex + dev_ex, train_rows + dev_rows)
    set_seed(cfg.seed)  # before the head is initialised
    model = build_model(cfg, task, model_dir)
    args, total = training_arguments(cfg, out, len(train_rows), sampling)
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=dev_rows,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics_fn(task, cfg.threshold),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience)] if cfg.patience else None,
        llrd=cfg.llrd,
    )
    t0 = time.perf_counter()
    trainer.train()
    predicted = trainer.predict(dev_rows)
    probs = probabilities(predicted.predictions, task.kind)
    dev_labels = gold_labels(predicted.label_ids, task.kind)
    seconds = time.perf_counter() - t0
    thresholds = tune_thresholds(dev_labels, probs) if task.kind == MULTI_LABEL else None
    dev = classification_report(
        task.kind, dev_labels, probs, task.label_names, threshold=cfg.threshold, tuned_thresholds=thresholds
    )
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    state = trainer.state
    results = {
        "train": {
            "step": state.global_step,
            "epoch": state.epoch,
            "best": state.best_metric,
            "best_checkpoint": state.best_model_checkpoint,
            "n_train": len(train_rows),
            "total_steps": total,
            "warmup_steps": args.get_warmup_steps(total),
            "llrd": cfg.llrd,
            "train_sampling_strategy": sampling,
            "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
            "param_groups_initial_lr": [g["initial_lr"] for g in trainer.optimizer.param_groups],
            "seconds": round(seconds, 1),
        },
        "dev": dev,
    }
    if thresholds is not None:
        results["thresholds"] = dict(zip(task.label_names, map(float, thresholds)))
    return results


def compare_tokens(cfg: Settings, task: TaskData, examples, rows) -> None:
    """Assert that the Trainer sees the very token ids minitune's tokenizer gives (same checkpoint, same cap)."""
    from minitune import load_tokenizer
    from minitune.data.features import tokenize

    ours = tokenize(examples, load_tokenizer(cfg.model), task.kind, cfg.max_length)
    diff = [
        i
        for i, (a, b) in enumerate(zip(ours, rows))
        if a["input_ids"] != b["input_ids"] or a["token_type_ids"] != b["token_type_ids"]
    ]
    print(f"token check: {len(examples) - len(diff)}/{len(examples)} examples identical", file=sys.stderr)
    if diff:
        raise SystemExit(f"error: token ids differ from minitune's on {len(diff)} examples, first index {diff[0]}")


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument(
        "--check-tokens",
        action="store_true",
        help="also tokenize with minitune and fail unless the ids are identical (slower; not for timing)",
    )
    own.add_argument(
        "--no-llrd",
        action="store_true",
        help="train without layer-wise LR decay even if the task default sets it (pass --llrd 1 to run.py to match)",
    )
    own.add_argument(
        "--group-by-length",
        action="store_true",
        help="train_sampling_strategy='group_by_length' (batches of similar lengths) instead of random batches",
    )
    extra, rest = own.parse_known_args(argv)
    cfg = Settings(**parse_config(rest).flat())  # minitune's settings, flat, as this script reads them
    if extra.no_llrd:
        cfg.llrd = None
    cfg.precision = choose_precision(cfg.precision, resolve_device(cfg.device))[0]  # auto: as minitune chooses
    check_supported(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = train(cfg, out, extra.check_tokens, "group_by_length" if extra.group_by_length else "random")
    results["train"]["wall_seconds"] = round(time.perf_counter() - T_START, 1)
    results = {
        "task": cfg.task,
        "model": cfg.model,
        "stack": "transformers.Trainer",
        "config": dict(vars(cfg)),
        **results,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    dev = results["dev"]
    keys = ("accuracy", "binary_f1", "macro_f1") if dev["kind"] == SINGLE_LABEL else ("jaccard", "macro_f1", "micro_f1")
    print("dev: " + "  ".join(f"{k} {dev[k]:.4f}" for k in keys if k in dev))
    return 0


if __name__ == "__main__":
    sys.exit(main())
