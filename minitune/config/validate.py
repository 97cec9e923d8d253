"""Every check of a run's settings, in one place: a bad setting fails here, before anything is written.

`validate(cfg)` needs no file: each setting within its choices and bounds, and the settings that do not go together
(including what a protocol refuses: cv, `seeds` or distill with the generative head, ...). `resolve(cfg, facts)`
takes what the files say (the task's kind and splits, the model's family and positions, how it scores options),
checks what depends on them, and fills the one default that depends on them (`padding`): the config it returns is
the run's (inputs.prepare then settles `precision` auto for the device), and nothing changes it afterwards. Errors
name settings between backticks (their flag's name, underscored); the CLI prints them as flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from minitune.config.defaults import DEFAULT_FOLDS
from minitune.config.sections import RunConfig, setting_field
from minitune.data.augment import check_ops
from minitune.data.batching import check_batch_size
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.errors import ConfigError, did_you_mean
from minitune.eval.metrics import SELECTION_METRICS
from minitune.train.distill_loss import check_distill_args
from minitune.train.distributed import check_launch as check_distributed_launch
from minitune.train.loss_weighting import check_weighting
from minitune.train.losses import loss_for
from minitune.train.metrics_log import check_report_to
from minitune.train.optim import check_optimizer_args, check_warmup_steps

DECODER_TYPES = ("llama", "qwen2", "gemma")  # the families that can answer in text (`head` generative)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> RunConfig:
    """The checks that need no file; returns cfg (frozen, unchanged)."""
    flat = cfg.flat()
    _check_choices(flat)
    _check_values(flat)
    _check_combinations(flat)
    _check_protocol(flat)
    return cfg


def _check_choices(flat: dict) -> None:
    for name, value in flat.items():
        choices = setting_field(name).metadata["choices"]
        named = [c for c in choices or () if c is not None]
        _check(
            not choices or value in choices,
            f"`{name}` {value!r}: choose one of {', '.join(named)}{did_you_mean(value, named)}",
        )


POSITIVE = ("grad_accum", "max_length", "log_every")
POSITIVE_OR_UNSET = (
    "max_steps",
    "max_tokens",
    "max_train_samples",
    "max_eval_samples",
    "eval_every",
    "folds",
    "max_folds",
    "patience",
    "save_every",
    "keep_checkpoints",
)


def _check_values(s: dict) -> None:
    """Each setting on its own: a number within its bounds."""
    check_batch_size(s["batch_size"])
    check_report_to(s["report_to"], s["tracking_uri"])
    _check(
        isinstance(s["epochs"], int) and s["epochs"] >= 0,
        f"`epochs` must be a non-negative integer (0: evaluate without training), got {s['epochs']!r}",
    )
    check_generative_settings(s["shots"], s["max_new_tokens"])
    for name in POSITIVE:
        _check(isinstance(s[name], int) and s[name] >= 1, f"`{name}` must be a positive integer, got {s[name]!r}")
    seeds = s["seeds"]
    _check(
        seeds is None
        or (bool(seeds) and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds))
        and len(set(seeds)) == len(seeds),
        f"`seeds` must be distinct integers, e.g. 42 123 456; got {list(seeds) if seeds else seeds!r}",
    )
    for name in POSITIVE_OR_UNSET:
        _check(s[name] is None or s[name] >= 1, f"`{name}` must be a positive integer, got {s[name]!r}")
    if s["warmup_steps"] is not None:
        check_warmup_steps(s["warmup_steps"])
    _check(0 <= s["warmup_ratio"] < 1, f"`warmup_ratio` must be in [0, 1), got {s['warmup_ratio']}")
    _check(0 <= s["lora_dropout"] < 1, f"`lora_dropout` must be in [0, 1), got {s['lora_dropout']}")
    _check(0 < s["threshold"] < 1, f"`threshold` must be in (0, 1), got {s['threshold']}")
    _check(
        s["threshold_split"] is None or 0 < s["threshold_split"] < 1,
        f"`threshold_split` must be a fraction in (0, 1), e.g. 0.1, got {s['threshold_split']}",
    )
    check_optimizer_args(s["lr"], s["weight_decay"], s["llrd"])
    _check(s["lora_r"] >= 0, f"`lora_r` must be >= 0, got {s['lora_r']}")
    _check(s["dist_timeout"] >= 1, f"`dist_timeout` must be a positive number of seconds, got {s['dist_timeout']}")
    _check(
        s["device"] in ("auto", "cpu") or s["device"].startswith("cuda"),
        f"`device` {s['device']!r}: use cpu, cuda (or cuda:N), or auto",
    )
    cache = str(s["token_cache"])
    _check(
        cache.lower() not in ("none", "false", "no", "0", "disable", "disabled", "") and not Path(cache).is_file(),
        f"`token_cache` {cache!r} is not a folder: use auto, off, or the path of a folder",
    )
    _check_loss_values(s)
    _check_robustness(s)
    if s["command"] == "distill":
        _check(bool(s["teacher"]), "distill needs `teacher`: the output directories of the runs to learn from")
        check_distill_args(s["distill_alpha"], s["temperature"])


def _check_loss_values(s: dict) -> None:
    _check(
        0.0 <= s["label_smoothing"] < 1.0,
        f"`label_smoothing` must be in [0, 1), got {s['label_smoothing']}; use e.g. 0.1",
    )
    _check(s["focal_gamma"] >= 0, f"`focal_gamma` must be >= 0, got {s['focal_gamma']} (2.0 is the paper's value)")
    _check(
        s["asl_gamma_neg"] >= 0 and s["asl_gamma_pos"] >= 0,
        f"`asl_gamma_neg` {s['asl_gamma_neg']} and `asl_gamma_pos` {s['asl_gamma_pos']} must be >= 0 (defaults 4 "
        "and 1)",
    )
    _check(0.0 <= s["asl_clip"] < 1.0, f"`asl_clip` must be in [0, 1), got {s['asl_clip']} (default 0.05)")


def _check_robustness(s: dict) -> None:
    """Adversarial training, augmentation, adaptive loss weights and attributions."""
    for name in ("adv_steps", "adv_start_epoch", "augment_copies", "ig_steps"):
        _check(isinstance(s[name], int) and s[name] >= 1, f"`{name}` must be a positive integer, got {s[name]!r}")
    _check(
        isinstance(s["explain_errors"], int) and s["explain_errors"] >= 0,
        f"`explain_errors` must be an integer >= 0 (0: none), got {s['explain_errors']!r}",
    )
    _check_adversarial(s)
    _check_augmentation(s)
    check_weighting(s["loss"], s["loss_weighting"], s["loss_weights_end"], s["loss_weight_lr"])


def _check_adversarial(s: dict) -> None:
    adv = s["adversarial"]
    for name in ("adv_eps", "adv_alpha"):
        _check(s[name] is None or 0 < s[name] < math.inf, f"`{name}` must be a finite number > 0, got {s[name]}")
    _check(
        not adv or s["head"] == "classifier",
        "`adversarial` perturbs a classifier's word embeddings or weights; `head` generative answers in text: use "
        "`head` classifier or drop `adversarial`",
    )
    _check(not (adv and s["fsdp"]), "`adversarial` runs under DDP, not `fsdp` (not supported): drop one")
    _check(
        not adv or s["max_steps"] is not None or s["adv_start_epoch"] <= s["epochs"],
        f"`adv_start_epoch` {s['adv_start_epoch']} is after the last of `epochs` {s['epochs']}: nothing would be "
        "trained adversarially; lower it",
    )


def _check_augmentation(s: dict) -> None:
    aug = s["augment"]
    _check(
        not aug or s["task"] != "recipe-mpr",
        "`augment` rewrites one text per example; recipe-mpr is multiple choice (not supported): drop `augment`",
    )
    _check(
        not aug or s["head"] == "classifier",
        "`augment` adds training copies for a classifier head; `head` generative is not supported: drop `augment`",
    )
    _check(
        aug != "paraphrase" or bool(s["paraphrase_model"]),
        "`augment` paraphrase needs `paraphrase_model`, the instruct decoder that writes them (e.g. smollm2)",
    )
    _check(
        not (s["paraphrase_model"] or s["paraphrase_cache"]) or aug == "paraphrase",
        "`paraphrase_model` and `paraphrase_cache` go with `augment` paraphrase: add it or drop them",
    )
    _check(0 < s["augment_prob"] < 1, f"`augment_prob` must be in (0, 1), got {s['augment_prob']}")
    if aug == "tokens":
        check_ops(s["augment_ops"])
    _check(
        isinstance(s["augment_rare"], int) and s["augment_rare"] >= 0,
        f"`augment_rare` must be an integer >= 0, got {s['augment_rare']}",
    )


def _check_combinations(s: dict) -> None:
    """Settings that do not go together, or that need another."""
    ffnn = s["model"] == "ffnn"
    _check(
        s["task"] != "custom" or bool(s["train_file"]),
        "`task` custom needs `train_file` (and `dev_file`, else 10% of train is held out)",
    )
    _check(
        not s["quantize"] or s["lora_r"] > 0,
        "`quantize` nf4 freezes the base weights: add `lora_r` (e.g. `lora_r` 16) to train adapters",
    )
    _check(
        not ffnn or not (s["lora_r"] or s["quantize"] or s["grad_checkpointing"]),
        "`model` ffnn is trained in full from scratch: drop `lora_r`, `quantize` and `grad_checkpointing`",
    )
    _check(
        not ffnn or (s["pooling"] == "auto" and s["choice_scorer"] != "bi"),
        "`model` ffnn averages its word vectors itself: drop `pooling` and `choice_scorer` bi",
    )
    bi_possible = s["task"] == "recipe-mpr" and s["head"] == "classifier" and s["choice_scorer"] != "cross"
    _check(
        not s["in_batch_negatives"] or (bi_possible and not ffnn),
        "`in_batch_negatives` trains a bi-encoder on multiple choice (recipe-mpr, `choice_scorer` bi or auto, a "
        "transformer `model`, `head` classifier): drop `in_batch_negatives`",
    )
    _check(
        not (s["in_batch_negatives"] and (s["class_weights"] != "none" or s["label_smoothing"])),
        "`class_weights` and `label_smoothing` spread over the item's options, and `in_batch_negatives` adds columns "
        "past them (some -inf): drop one",
    )
    _check_distributed(s)
    _check_long_text(s)
    _check_sources(s)
    _check(
        s["max_tokens"] is None or s["max_tokens"] >= s["max_length"],
        f"`max_tokens` {s['max_tokens']} is below `max_length` {s['max_length']}: a batch must hold "
        "the longest example; raise `max_tokens` or lower `max_length`",
    )
    _check(
        s["output_dir"] == s["resume"] or not s["resume"],
        f"`resume` {s['resume']} continues in that directory: drop `output_dir` {s['output_dir']} or make it the same",
    )
    _check(s["resume"] is None or s["checkpoint"], "`resume` needs checkpoints: leave `checkpoint` on")
    _check(
        not (s["resume"] and s["overwrite"]),
        "`resume` continues the run in its folder and `overwrite` starts it over: drop one",
    )


def _check_sources(s: dict) -> None:
    """Extra training sources, their weights and GoEmotions' taxonomies (the files are read and checked later)."""
    _check(
        s["taxonomy"] is None or s["task"] == "goemotions",
        f"`taxonomy` regroups GoEmotions' labels; `task` is {s['task']}: drop `taxonomy`",
    )
    sources, weights = s["add_train"] or (), s["source_weights"]
    _check(
        all(isinstance(x, (str, dict)) for x in sources),
        "`add_train` takes built-in task names, source .toml files or source tables",
    )
    for refused, why in (
        (s["task"] == "recipe-mpr", "recipe-mpr is multiple choice, with no labels to map into"),
        (s["head"] == "generative", "`head` generative is not trained on mapped sources (not supported)"),
    ):
        _check(not (sources and refused), f"`add_train` brings labelled examples into a classifier's labels; {why}")
    if weights is None:
        return
    _check(bool(sources), "`source_weights` weighs `add_train` sources: add them, or drop `source_weights`")
    _check(
        len(weights) == len(sources),
        f"`source_weights` gives {len(weights)} weights for {len(sources)} `add_train` sources: give one each",
    )
    _check(
        all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < float("inf") for w in weights),
        f"`source_weights` must be positive finite numbers (1: each example once), got {' '.join(map(str, weights))}",
    )


def _check_long_text(s: dict) -> None:
    chunk = s["long_text"] == "chunk"
    _check(
        s["chunk_overlap"] is None or chunk,
        "`chunk_overlap` sets how `long_text` chunk windows overlap: add `long_text` chunk, or drop it",
    )
    _check(
        s["chunk_overlap"] is None or 0 <= s["chunk_overlap"] <= s["max_length"] // 2,
        f"`chunk_overlap` {s['chunk_overlap']} must be from 0 to half of `max_length` ({s['max_length'] // 2}), "
        "so each window moves on by at least half its length",
    )
    if not chunk:
        return
    for refused, why in (
        (s["model"] == "ffnn", "`model` ffnn reads every token already"),
        (s["head"] == "generative", "`head` generative reads its prompt whole"),
        (bool(s["pair_col"]), "`pair_col` gives two texts, not one to cut"),
        (s["task"] == "recipe-mpr", "recipe-mpr's options are short texts of their own"),
    ):
        _check(not refused, f"`long_text` chunk cuts one long text per example for an encoder; {why}: drop `long_text`")


def _check_distributed(s: dict) -> None:
    _check(
        not (s["fsdp"] and s["quantize"]),
        "`fsdp` shards trainable weights; NF4 bases are not shardable here: drop `quantize` or `fsdp`",
    )
    _check(not s["fsdp_cpu_offload"] or bool(s["fsdp"]), "`fsdp_cpu_offload` needs `fsdp` full or grad-op")
    _check(
        s["loss_weighting"] == "fixed" or not s["fsdp"],
        "`loss_weighting` learns or moves weights outside the model, which `fsdp` checkpoints cannot hold (not "
        "supported): drop one",
    )
    _check(
        not (s["fsdp"] and s["head"] == "generative"),
        "`head` generative decodes each rank's own prompts, which FSDP's collective forwards cannot do: drop "
        "`fsdp` (torchrun without it trains the generative head with DDP)",
    )
    _check(
        not (s["fsdp"] and (s["keep_checkpoints"] or 1) > 1),
        "`keep_checkpoints` above 1 is not kept under `fsdp` "
        "(sharded checkpoints keep the newest only): drop one of them",
    )


def _check_protocol(s: dict) -> None:
    """What a protocol refuses: the settings that hold for one model but not for the protocols that train several,
    and the settings of one protocol given to another."""
    cv, distill = s["command"] == "cv", s["command"] == "distill"
    several = cv or bool(s["seeds"])
    _check(
        not (s["head"] == "generative" and (several or distill)),
        "`head` generative answers in text: cv, `seeds` and distill average or learn a classifier head's "
        "probabilities; use `head` classifier",
    )
    _check(
        not (s["threshold_split"] and (several or s["head"] == "generative")),
        "`threshold_split` tunes one classifier's thresholds on held-out training data; cv tunes them on its "
        "out-of-fold predictions (honest already) and `seeds` on dev: drop `threshold_split`",
    )
    _check(
        not (s["predict_file"] and several),
        "`predict_file` labels rows with the one model of a run; for cv and `seeds` label them afterwards with "
        "`minitune predict --model OUTPUT_DIR`, which averages the members: drop `predict_file`",
    )
    _check(
        not (s["predict_file"] and s["head"] == "generative"),
        "`predict_file` goes with the classifier head; label a file with a generative run's model "
        "through minitune predict",
    )
    _check(
        not (distill and s["in_batch_negatives"]),
        "distill matches the teacher's probabilities over each item's own options: drop `in_batch_negatives`",
    )
    _check(
        not (distill and s["seeds"]),
        "distill trains one student: drop `seeds` (distil from a `seeds` run as the teacher instead)",
    )
    _check(
        s["folds"] is None or cv,
        "`folds` is minitune cv's number of folds; to train only the first N of recipe-mpr's published folds, use "
        "`max_folds`",
    )
    _check(
        s["folds"] is None or s["folds"] >= 2, f"`folds` {s['folds']}: cross-validation needs at least 2 folds, e.g. 5"
    )
    _check(
        s["max_folds"] is None or s["task"] == "recipe-mpr" and not cv,
        "`max_folds` trains the first N of recipe-mpr's published folds; minitune cv sets its own with `folds`",
    )


@dataclass(frozen=True)
class Facts:
    """What the files say, for the checks that need them (read by inputs.prepare)."""

    kind: str  # the task's kind (data/kinds.py)
    num_labels: int
    train_labels: np.ndarray  # every training example's label(s), for class weights
    has_dev: bool
    n_train: int
    model_type: str | None  # the checkpoint's family; None for the ffnn baseline
    usable_positions: int | None  # how many positions an input may use (None: no table to index past)
    choice_scorer: str | None  # multiple choice: "cross" or "bi", as `choice_scorer` resolves for this checkpoint


def resolve(cfg: RunConfig, facts: Facts) -> RunConfig:
    """The checks that need the task's and the model's files, and the run's `padding` (bucketed unless set, but
    for an encoder's multiple choice): the run's final config."""
    s = cfg.flat()
    _check(
        s["metric"] in SELECTION_METRICS[facts.kind],
        f"`metric` {s['metric']!r} is not a selection metric for {facts.kind} tasks; choose one of "
        f"{', '.join(SELECTION_METRICS[facts.kind])}",
    )
    loss_for(cfg.loss, facts.kind, facts.num_labels, facts.train_labels)  # a loss that does not fit the task fails here
    _check(
        facts.usable_positions is None or s["max_length"] <= facts.usable_positions,
        f"`max_length` {s['max_length']} exceeds {s['model']}'s {facts.usable_positions} positions; use at most "
        f"{facts.usable_positions}",
    )
    _check_task_protocol(s, facts)
    _check(
        s["long_text"] != "chunk" or facts.model_type not in DECODER_TYPES,
        f"`long_text` chunk averages an encoder's windows over one text; {s['model']} is a decoder, which reads as "
        "far as its positions go: drop `long_text` and `chunk_overlap`, and raise `max_length` instead",
    )
    _check(
        s["long_text"] != "chunk" or facts.kind != MULTIPLE_CHOICE,
        "`long_text` chunk cuts one long text per example; a multiple-choice task pairs a query with each option: "
        "drop `long_text`",
    )
    if s["padding"] is None:  # length-bucketed batches (benchmarks/README.md, full-size runs); an encoder's
        # multiple-choice items (bucketing would also group a bi-encoder's in-batch negatives by length) unpadded
        mc_encoder = facts.kind == MULTIPLE_CHOICE and facts.model_type not in DECODER_TYPES
        cfg = replace(cfg, data=replace(cfg.data, padding="dynamic" if mc_encoder else "bucketed"))
    return cfg


def _check_task_protocol(s: dict, facts: Facts) -> None:
    _check(
        not (s["predict_file"] and facts.kind == MULTIPLE_CHOICE),
        "`predict_file` labels texts for classification tasks; score multiple-choice items with `test_file`",
    )
    _check(
        not (s["seeds"] and s["command"] != "cv" and not facts.has_dev),
        "`seeds` averages the members' dev probabilities: the task needs a dev set (custom: `dev_file`), else each "
        "seed would hold out different examples; without one, use minitune cv with `seeds`",
    )
    if s["command"] == "cv":
        k = s["folds"] or DEFAULT_FOLDS
        n = min(facts.n_train, s["max_train_samples"] or facts.n_train)
        _check(n >= 2 * k, f"`folds` {k} needs at least {2 * k} training examples, got {n}")
    if s["head"] == "generative":
        check_generative_model(s["model"], facts.model_type)
    _check(
        not (s["in_batch_negatives"] and facts.choice_scorer != "bi"),
        f"`in_batch_negatives` trains a bi-encoder, and `model` {s['model']} declares no sentence-embedding pooling "
        "(it would score options as a cross-encoder): add `choice_scorer` bi, or drop `in_batch_negatives`",
    )


def check_generative_settings(shots: int, max_new_tokens: int) -> None:
    """How an instruct model is asked (train's `head` generative and predict's alike)."""
    _check(shots >= 0, f"`shots` must be >= 0, got {shots}")
    _check(max_new_tokens >= 1, f"`max_new_tokens` must be a positive integer, got {max_new_tokens}")


def check_launch(cfg: RunConfig) -> torch.device:
    """The run's device, and the settings that need the launch to fit them: FSDP shards across torchrun's
    processes, and its CPU offload moves GPU memory."""
    device = resolve_device(cfg.device)
    check_distributed_launch(cfg.distributed.fsdp, cfg.distributed.fsdp_cpu_offload, device)
    return device


def check_generative_model(model: str, model_type: str | None) -> None:
    """`head` generative asks a decoder to answer in text; any other family cannot."""
    _check(
        model_type in DECODER_TYPES,
        f"`head` generative needs a decoder checkpoint ({', '.join(DECODER_TYPES)}); {model} is "
        f"{model_type or 'not one'}: use e.g. `model` smollm2",
    )


def resolve_device(name: str) -> torch.device:
    """A device name as a torch device: auto is cuda when a GPU is visible, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"`device` {name!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"`device` {name}: no CUDA device is available here; use `device` cpu")
    return device
