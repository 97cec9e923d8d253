"""Run configuration: one dataclass, exposed as argparse flags (dashes) and TOML keys (underscores or dashes).

Precedence, lowest to highest: the dataclass defaults, the task's defaults (from the source documents), a
`--config run.toml` file, then flags given on the command line. The resolved config is printed and saved as
`config.json` in the output directory with every run.
"""

from __future__ import annotations

import difflib
import json
import sys
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import get_args, get_type_hints

import torch

from minitune.data.batching import check_batch_size
from minitune.data.tasks import TASKS
from minitune.errors import ConfigError
from minitune.train.optim import check_optimizer_args, check_warmup_steps
from minitune.train.tensorboard import check_available


def opt(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    task: str = opt(None, "task to train: humor | semeval | goemotions | recipe-mpr | custom", TASKS)
    model: str = opt(
        "minilm",
        "model name, Hub id, local directory or .gguf file; `ffnn` for the bag-of-embeddings "
        "baseline; aliases: minilm, smollm2, xlm-roberta-large, roberta-base, ...",
    )
    data_dir: str = opt(None, "directory holding the task's files (else $MINITUNE_DATA_DIR, else the user cache)")
    output_dir: str = opt(None, "where config, metrics, results and model/ go (default runs/<task>-<model>)")
    train_file: str = opt(None, "custom task: training file (.csv, .tsv or .jsonl)")
    dev_file: str = opt(None, "custom task: dev file in the same format")
    test_file: str = opt(
        None,
        "a further labelled file in the task's format, evaluated with the best model "
        "(recipe-mpr: with the mean of the fold models' probabilities)",
    )
    text_col: str = opt("text", "custom task: column holding the text")
    label_col: str = opt("label", "custom task: column holding the label(s); several labels comma-separated")
    pair_col: str = opt(None, "custom task: optional column holding a second text segment")
    label_names: str = opt(
        None,
        "custom: comma-separated label names in id order, when the files hold 0-based label "
        "ids (default: the labels found in the training file, sorted)",
    )
    epochs: int = opt(3, "training epochs")
    max_steps: int = opt(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = opt(32, "examples per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step (effective batch = batch_size x grad_accum)")
    max_tokens: int = opt(None, "token-budget batches: at most this many padded tokens per micro-batch")
    lr: float = opt(2e-5, "peak learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on biases and norms)")
    warmup_ratio: float = opt(0.1, "share of steps spent in linear warmup")
    warmup_steps: int = opt(None, "optimizer steps of linear warmup (instead of --warmup-ratio)")
    scheduler: str = opt("cosine", "schedule after warmup", ("cosine", "linear", "constant", "plateau"))
    llrd: float = opt(
        None, "layer-wise LR decay in (0, 1]: head at lr, each lower layer x llrd, embeddings lowest (unset: off)"
    )
    clip_grad: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    max_length: int = opt(128, "truncate inputs to this many tokens")
    max_train_samples: int = opt(None, "use only the first N training examples (after a seeded shuffle)")
    max_eval_samples: int = opt(
        None,
        "use only the first N dev examples (recipe-mpr: of each fold's "
        "validation part; its test part is always scored whole)",
    )
    seed: int = opt(42, "seed of every RNG (python, numpy, torch, sampler, option shuffle)")
    precision: str = opt(
        "fp32", "mixed precision: bf16 autocast, fp16 autocast + loss scaler", ("fp32", "bf16", "fp16")
    )
    padding: str = opt(
        None,
        "batching: random batches padded to max_length (fixed) or to their longest (dynamic), "
        "or length-bucketed batches (least padding). Default: dynamic for encoders, which run "
        "padding-heavy batches unpadded (length-sorted batches cost about a point of dev score on "
        "small data sets, see README); bucketed for decoders, which have no unpadded path",
        (None, "fixed", "dynamic", "bucketed"),
    )
    loss: str = opt(None, "ce | bce | focal | asl, or a weighted sum like bce:0.5+asl:0.5 (default ce / bce)")
    label_smoothing: float = opt(0.0, "label smoothing for cross-entropy")
    class_weights: str = opt("none", "class weights for ce / pos_weight for bce", ("none", "balanced"))
    oversample_rare: int = opt(0, "multi-label: repeat examples of labels with fewer than N positives up to N")
    focal_gamma: float = opt(2.0, "focal loss gamma")
    asl_gamma_neg: float = opt(4.0, "asymmetric loss gamma for negatives")
    asl_gamma_pos: float = opt(1.0, "asymmetric loss gamma for positives")
    asl_clip: float = opt(0.05, "asymmetric loss probability margin for negatives")
    metric: str = opt(None, "early-stopping metric (default macro_f1; accuracy for recipe-mpr)")
    patience: int = opt(
        None, "stop after this many evaluations (not epochs) without improvement; default: never stop early"
    )
    eval_every: int = opt(None, "evaluate every N optimizer steps (default: every epoch)")
    log_every: int = opt(10, "log a JSON line to metrics.jsonl every N optimizer steps")
    report_to: str = opt(
        None,
        "also write metrics.jsonl's scalars as TensorBoard events in OUTPUT_DIR/tensorboard",
        (None, "tensorboard"),
    )
    threshold: float = opt(0.5, "multi-label decision threshold reported beside the tuned per-class thresholds")
    threshold_split: float = opt(
        None,
        "multi-label: tune the per-label thresholds on a stratified fraction F of train held out from training "
        "(an honest dev score) instead of on dev itself (optimistic: tuned and scored on the same examples)",
    )
    folds: int = opt(
        None, "minitune cv: the number of folds K (default 5); recipe-mpr training: only the first N of its 5"
    )
    seeds: list = opt(
        None,
        "train and cv: one model per seed (e.g. --seeds 42 123 456), reported each, as mean ± std and as the "
        "ensemble of their mean probabilities",
    )
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    compile: bool = opt(False, "torch.compile the model (on CPU it lost, compile time included: benchmarks/README.md)")
    resume: str = opt(None, "resume from this output directory's last checkpoint")
    checkpoint: bool = opt(True, "write resumable checkpoints (--no-checkpoint: a throwaway run, nothing to resume)")
    save_every: int = opt(None, "also checkpoint every N optimizer steps (default: at each evaluation)")
    keep_checkpoints: int = opt(1, "keep the newest K checkpoints (older ones are removed)")
    predict_file: str = opt(None, "an unlabelled file to label with the selected model (predictions.csv)")
    delimiter: str = opt(
        None,
        "custom task: field separator of .csv/.tsv/.txt files (default: sniffed from the header)",
        (None, "tab", "comma", "semicolon", "bar"),
    )
    device: str = opt("auto", "cpu, cuda, or auto")
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning)")
    lora_alpha: float = opt(None, "LoRA alpha (default 2 x rank)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA branch")
    lora_targets: str = opt(None, "comma-separated module-name patterns to wrap with LoRA (default per family)")
    quantize: str = opt(None, "quantize the frozen base weights: nf4 (QLoRA; needs --lora-r)", (None, "nf4"))
    fsdp: str = opt(
        None,
        "under torchrun: shard with FSDP2, full (parameters, gradients and optimizer state: ZeRO-3) or grad-op "
        "(parameters kept whole between forward and backward: ZeRO-2); default DDP",
        (None, "full", "grad-op"),
    )
    fsdp_cpu_offload: bool = opt(False, "with --fsdp: keep parameter shards, gradients and optimizer state on CPU")
    dist_timeout: int = opt(600, "under torchrun: seconds a rank waits for the others before the run fails")
    pooling: str = opt(
        "auto",
        "what the classification head reads: auto (as the checkpoint declares in its sentence-transformers files, "
        "else the family's reference head), cls (the reference head), mean or max of the real tokens",
        ("auto", "cls", "mean", "max"),
    )
    choice_scorer: str = opt(
        "auto",
        "multiple choice: cross (encode each (query, option) pair), bi (scaled cosine similarity of separate "
        "embeddings); auto: bi when the checkpoint declares a sentence-embedding pooling",
        ("auto", "cross", "bi"),
    )
    in_batch_negatives: bool = opt(
        False,
        "multiple choice with --choice-scorer bi: while training, the other items' options in the batch are "
        "negatives too (sentence-transformers' MultipleNegativesRankingLoss)",
    )
    head: str = opt(
        "classifier",
        "classifier: a classification head on the model; generative: an instruct decoder answers in its chat "
        "format (--epochs 0: zero-/few-shot; more: instruction tuning, e.g. with --lora-r)",
        ("classifier", "generative"),
    )
    answer_mode: str = opt(
        "constrained",
        "--head generative: constrained (generation restricted to the labels), score (likelihood of each "
        "label) or free (unconstrained generation, parsed)",
        ("constrained", "score", "free"),
    )
    shots: int = opt(0, "--head generative: few-shot examples drawn stratified from train with --seed")
    prompt_template: str = opt(None, "--head generative: Jinja file for the user turn (text, pair, labels, options)")
    max_new_tokens: int = opt(32, "--head generative --answer-mode free: generation length limit")


FIELDS = {f.name for f in fields(RunConfig)}

# Defaults per task, from the source documents (the humor document is explicit; the others follow their papers).
TASK_DEFAULTS: dict[str, dict] = {
    "humor": dict(
        lr=2e-5,
        warmup_ratio=0.1,
        scheduler="cosine",
        label_smoothing=0.1,
        llrd=0.95,
        batch_size=8,
        grad_accum=4,
        patience=5,
        epochs=5,
    ),
    "semeval": dict(
        lr=3e-5, warmup_ratio=0.1, scheduler="linear", epochs=5, batch_size=32, metric="jaccard", patience=3
    ),
    "goemotions": dict(
        lr=5e-5, warmup_ratio=0.1, scheduler="linear", epochs=4, batch_size=32, threshold=0.3, metric="macro_f1"
    ),
    "recipe-mpr": dict(
        lr=2e-5, warmup_ratio=0.1, scheduler="linear", epochs=5, batch_size=8, metric="accuracy", max_length=64
    ),
    "custom": dict(),
}

# The bag-of-embeddings baseline trains from scratch: a far larger step size and no layer structure to decay.
FFNN_DEFAULTS = dict(lr=1e-3, llrd=None, label_smoothing=0.0, epochs=10, patience=3, batch_size=32, grad_accum=1)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(name: str) -> type:
    hint = get_type_hints(RunConfig)[name]
    return next(t for t in (get_args(hint) or (hint,)) if t is not type(None))


def _coerce(where: str, key: str, value):
    """A value as the field's type: ints become floats where a float is wanted, nothing else is guessed. `where`
    starts the error message (the TOML file)."""
    typ = field_type(key)
    if value is None or isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(
        f"{where}{key} = {value!r} should be a {typ.__name__} (e.g. {key} = "
        f"{RunConfig.__dataclass_fields__[key].default!r})"
    )


def parse_toml(path: str, prefix: str) -> dict:
    """A TOML file as a dict; a missing or malformed file is one error line starting with `prefix`."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{prefix}file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{prefix}not valid TOML ({e})") from None


def checked_keys(prefix: str, table: dict, allowed, where: str = "") -> dict:
    """A table's settings under RunConfig's names (dashes or underscores); an unknown key is one error line."""
    out = {}
    for k, v in table.items():
        key = k.replace("-", "_")
        if key not in allowed:
            raise ConfigError(
                f"{prefix}unknown key {k!r}{where}{did_you_mean(key, allowed)}; keys are the flags' names, e.g. "
                "batch_size"
            )
        out[key] = v
    return out


def read_toml(path: str) -> dict:
    """A TOML file's settings under RunConfig's names (dashes or underscores)."""
    prefix = f"`config` {path}: "
    return {k: _coerce(prefix, k, v) for k, v in checked_keys(prefix, parse_toml(path, prefix), FIELDS).items()}


def make_config(config: str | None = None, **options) -> RunConfig:
    """A validated RunConfig from settings under RunConfig's names, over a TOML file's (`config`), over the task's
    defaults: what the command line and minitune.train share."""
    unknown = [k for k in options if k not in FIELDS]
    if unknown:
        raise ConfigError(f"unknown setting `{unknown[0]}`{did_you_mean(unknown[0], FIELDS)}")
    from_file = read_toml(config) if config else {}
    chosen = {**from_file, **{k: _coerce("", k, v) for k, v in options.items()}}
    if chosen.get("task") is None:
        raise ConfigError(f"`task` is required: one of {', '.join(TASKS)}")
    defaults = {**TASK_DEFAULTS.get(chosen["task"], {})}
    if chosen.get("model", "minilm") == "ffnn":
        defaults.update(FFNN_DEFAULTS)
    if chosen.get("loss") not in (None, "ce") and "label_smoothing" not in chosen:
        defaults.pop("label_smoothing", None)  # a task's smoothing default belongs to its default loss, ce
    return validate(RunConfig(**{**defaults, **chosen}))


def choices_of(f) -> list[str]:
    """A RunConfig field's allowed values (None, where allowed, is left out)."""
    return [c for c in (f.metadata["choices"] or []) if c is not None]


def did_you_mean(value: str, known) -> str:
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> RunConfig:
    """Every check that needs no file: a bad setting fails here, before any output is written. Fills the settings
    whose default depends on others (metric, output_dir)."""
    _check_values(cfg)
    _check_combinations(cfg)
    if cfg.metric is None:
        cfg.metric = "accuracy" if cfg.task == "recipe-mpr" else "macro_f1"
    if cfg.resume:
        _check(
            cfg.output_dir in (None, cfg.resume),
            f"`resume` {cfg.resume} continues in that directory: drop `output_dir` {cfg.output_dir} or make it the "
            "same",
        )
        cfg.output_dir = cfg.resume
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("runs") / f"{cfg.task}-{Path(cfg.model).name}")
    return cfg


def _check_values(cfg: RunConfig) -> None:
    """Each setting on its own: a choice among its choices, a number within its bounds."""
    for f in fields(RunConfig):
        value, choices = getattr(cfg, f.name), f.metadata["choices"]
        _check(
            not choices or value in choices,
            f"`{f.name}` {value!r}: choose one of {', '.join(choices_of(f))}{did_you_mean(value, choices_of(f))}",
        )
    check_batch_size(cfg.batch_size)
    check_available(cfg.report_to)
    _check(
        isinstance(cfg.epochs, int) and cfg.epochs >= 0,
        f"`epochs` must be a non-negative integer (0: evaluate without training), got {cfg.epochs!r}",
    )
    _check(cfg.shots >= 0, f"`shots` must be >= 0, got {cfg.shots}")
    for name in ("grad_accum", "max_length", "log_every", "keep_checkpoints", "max_new_tokens"):
        value = getattr(cfg, name)
        _check(isinstance(value, int) and value >= 1, f"`{name}` must be a positive integer, got {value!r}")
    _check(
        cfg.seeds is None
        or (bool(cfg.seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in cfg.seeds))
        and len(set(cfg.seeds)) == len(cfg.seeds),
        f"`seeds` must be distinct integers, e.g. 42 123 456; got {cfg.seeds!r}",
    )
    for name in (
        "max_steps",
        "max_tokens",
        "max_train_samples",
        "max_eval_samples",
        "eval_every",
        "folds",
        "patience",
        "save_every",
    ):
        value = getattr(cfg, name)
        _check(value is None or value >= 1, f"`{name}` must be a positive integer, got {value!r}")
    if cfg.warmup_steps is not None:
        check_warmup_steps(cfg.warmup_steps)
    _check(0 <= cfg.warmup_ratio < 1, f"`warmup_ratio` must be in [0, 1), got {cfg.warmup_ratio}")
    _check(0 <= cfg.lora_dropout < 1, f"`lora_dropout` must be in [0, 1), got {cfg.lora_dropout}")
    _check(0 < cfg.threshold < 1, f"`threshold` must be in (0, 1), got {cfg.threshold}")
    _check(
        cfg.threshold_split is None or 0 < cfg.threshold_split < 1,
        f"`threshold_split` must be a fraction in (0, 1), e.g. 0.1, got {cfg.threshold_split}",
    )
    check_optimizer_args(cfg.lr, cfg.weight_decay, cfg.llrd)
    _check(cfg.lora_r >= 0, f"`lora_r` must be >= 0, got {cfg.lora_r}")
    _check(cfg.dist_timeout >= 1, f"`dist_timeout` must be a positive number of seconds, got {cfg.dist_timeout}")
    _check(
        cfg.device in ("auto", "cpu") or cfg.device.startswith("cuda"),
        f"`device` {cfg.device!r}: use cpu, cuda (or cuda:N), or auto",
    )


def _check_combinations(cfg: RunConfig) -> None:
    """Settings that do not go together, or that need another."""
    _check(
        cfg.task != "custom" or bool(cfg.train_file),
        "`task` custom needs `train_file` (and `dev_file`, else 10% of train is held out)",
    )
    _check(
        not cfg.quantize or cfg.lora_r > 0,
        "`quantize` nf4 freezes the base weights: add `lora_r` (e.g. `lora_r` 16) to train adapters",
    )
    _check(
        cfg.model != "ffnn" or not (cfg.lora_r or cfg.quantize or cfg.grad_checkpointing),
        "`model` ffnn is trained in full from scratch: drop `lora_r`, `quantize` and `grad_checkpointing`",
    )
    _check(
        cfg.model != "ffnn" or (cfg.pooling == "auto" and cfg.choice_scorer != "bi"),
        "`model` ffnn averages its word vectors itself: drop `pooling` and `choice_scorer` bi",
    )
    bi_possible = cfg.task == "recipe-mpr" and cfg.head == "classifier" and cfg.choice_scorer != "cross"
    _check(
        not cfg.in_batch_negatives or (bi_possible and cfg.model != "ffnn"),
        "`in_batch_negatives` trains a bi-encoder on multiple choice (recipe-mpr, `choice_scorer` bi or auto, a "
        "transformer `model`, `head` classifier): drop `in_batch_negatives`",
    )
    _check(
        not (cfg.in_batch_negatives and (cfg.class_weights != "none" or cfg.label_smoothing)),
        "`class_weights` and `label_smoothing` spread over the item's options, and `in_batch_negatives` adds columns "
        "past them (some -inf): drop one",
    )
    _check(
        not (cfg.fsdp and cfg.quantize),
        "`fsdp` shards trainable weights; NF4 bases are not shardable here: drop `quantize` or `fsdp`",
    )
    _check(not cfg.fsdp_cpu_offload or bool(cfg.fsdp), "`fsdp_cpu_offload` needs `fsdp` full or grad-op")
    _check(
        not (cfg.fsdp and cfg.head == "generative"),
        "`head` generative decodes each rank's own prompts, which FSDP's collective forwards cannot do: drop "
        "`fsdp` (torchrun without it trains the generative head with DDP)",
    )
    _check(cfg.resume is None or cfg.checkpoint, "`resume` needs checkpoints: leave `checkpoint` on")
    _check(
        not (cfg.fsdp and cfg.keep_checkpoints > 1),
        "`keep_checkpoints` above 1 is not kept under `fsdp` "
        "(sharded checkpoints keep the newest only): drop one of them",
    )


# What a resumed run must share with the run it continues: anything that shapes the model, data or schedule.
RESUME_KEYS = (
    "task",
    "model",
    "label_names",
    "lora_r",
    "lora_alpha",
    "lora_targets",
    "quantize",
    "pooling",
    "choice_scorer",
    "lr",
    "llrd",
    "batch_size",
    "grad_accum",
    "max_tokens",
    "padding",
    "epochs",
    "max_steps",
    "max_length",
    "max_train_samples",
    "threshold_split",
    "seed",
    "scheduler",
    "warmup_ratio",
    "warmup_steps",
    "precision",
)


def resume_signature(cfg) -> dict:
    return {k: getattr(cfg, k) for k in RESUME_KEYS if hasattr(cfg, k)}


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


def dump(cfg: RunConfig) -> str:
    return json.dumps(asdict(cfg), indent=2, sort_keys=True)


# Shown in the printed settings whatever their value; any other setting is shown when it is not its default.
ALWAYS_SHOWN = (
    "task",
    "model",
    "output_dir",
    "epochs",
    "batch_size",
    "grad_accum",
    "lr",
    "max_length",
    "metric",
    "seed",
    "precision",
    "padding",
)


def used_settings(cfg: RunConfig) -> dict:
    """The settings that shape this run: the main ones and every one changed from its default, leaving out the
    options of features the run does not use (focal and ASL settings without those losses, LoRA without LoRA...)."""
    loss = cfg.loss or ""
    unused = set()
    if "focal" not in loss:
        unused.add("focal_gamma")
    if "asl" not in loss:
        unused |= {"asl_gamma_neg", "asl_gamma_pos", "asl_clip"}
    if not cfg.lora_r:
        unused |= {"lora_alpha", "lora_dropout", "lora_targets"}
    if cfg.task != "custom":
        unused |= {"label_col", "label_names", "delimiter"}
    if cfg.task != "recipe-mpr" and not cfg.folds:
        unused.add("folds")
    return {
        k: v
        for k, v in asdict(cfg).items()
        if k not in unused and (k in ALWAYS_SHOWN or v != RunConfig.__dataclass_fields__[k].default)
    }


def print_config(cfg: RunConfig, stream=None) -> None:
    stream = stream or sys.stdout  # looked up at call time: a redirected stdout is used
    print(f"settings (every one is saved in {Path(cfg.output_dir) / 'config.json'}):", file=stream)
    for k, v in used_settings(cfg).items():
        print(f"  {k:20s} {v}", file=stream)
