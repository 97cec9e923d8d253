"""The settings of a run, in typed sections: each section is what one part of the code reads, and is passed alone.

    RunConfig
      data         the task, its files and columns, lengths, subsets and batching    -> data/, finetune.py
        augmentation   extra training copies: token operations or paraphrases        -> data/augment.py
      model        the checkpoint, its head, pooling, adapter (LoRA) and quantization -> checkpoints/load.py, adapters/
      loss         the training loss and its options                                  -> train/losses.py
      loop         schedule, optimizer, precision, evaluation and checkpoint cadence -> train/loop.py
        adversary      adversarial training: FGM, PGD or AWP                          -> train/adversarial.py
      eval         decision thresholds                                                -> eval/thresholds.py
      generative   how an instruct decoder is asked (`head` generative)               -> eval/answers.py
      distributed  torchrun: FSDP and the collective timeout                          -> train/parallel.py
      distill      `minitune distill`: the teacher and the loss weights               -> experiments/distill.py
      outputs      where the run is written and whether it continues an earlier one
    and, at the top, what picks the protocol (`command`, `seeds`, `folds`, `max_folds`), the `seed` and the `device`.

Every field's name is its command-line flag with underscores (`lora_r` is `--lora-r`), unique across sections, so the
command line stays flat, a TOML file may use flat keys or `[section]` tables, and an error that names a field names
the flag. A RunConfig is built and checked once (config/load.py, config/validate.py), then frozen; `with_settings`
derives another one for a run a protocol starts from it (a seed's member, distillation's student alone), changing
only where it runs and which seed it draws, which the first check already covered.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields


def opt(default, help: str, choices=None):
    """A setting: its default, its help line for --help, and its allowed values (None where unset is allowed)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def section(cls):
    return field(default_factory=cls, metadata={"section": True})


TASK_NAMES = ("humor", "semeval", "goemotions", "recipe-mpr", "custom")


@dataclass(frozen=True)
class AugmentSettings:
    """Augmented copies of training examples (data/augment.py); dev, test and predict files are never augmented."""

    augment: str = opt(
        None,
        "add augmented copies of training examples: tokens (random word deletion, swap and insertion of words from "
        "the training texts) or paraphrase (an instruct decoder rewrites each text; cached)",
        (None, "tokens", "paraphrase"),
    )
    augment_ops: str = opt("delete,swap,insert", "--augment tokens: the word operations, comma-separated")
    augment_prob: float = opt(0.1, "--augment tokens: each word's chance of each operation")
    augment_copies: int = opt(1, "augmented copies per chosen training example")
    augment_rare: int = opt(
        0,
        "augment only examples carrying a label with fewer than N training examples (0: every example); "
        "--oversample-rare then counts the copies among the positives",
    )
    paraphrase_model: str = opt(None, "--augment paraphrase: the instruct decoder that writes them (e.g. smollm2)")
    paraphrase_cache: str = opt(
        None,
        "--augment paraphrase: JSONL cache of generated paraphrases, keyed by model, seed, text and copy (default: "
        "in the user cache, per model)",
    )


@dataclass(frozen=True)
class DataSettings:
    task: str = opt(None, "task to train: humor | semeval | goemotions | recipe-mpr | custom", TASK_NAMES)
    data_dir: str = opt(None, "directory holding the task's files (else $MINITUNE_DATA_DIR, else the user cache)")
    train_file: str = opt(None, "custom task: training file (.csv, .tsv or .jsonl)")
    dev_file: str = opt(None, "custom task: dev file in the same format")
    test_file: str = opt(
        None,
        "a further labelled file in the task's format, evaluated with the best model "
        "(recipe-mpr: with the mean of the fold models' probabilities)",
    )
    predict_file: str = opt(None, "an unlabelled file to label with the selected model (predictions.csv)")
    text_col: str = opt("text", "custom task: column holding the text")
    label_col: str = opt("label", "custom task: column holding the label(s); several labels comma-separated")
    pair_col: str = opt(None, "custom task: optional column holding a second text segment")
    label_names: str = opt(
        None,
        "custom: comma-separated label names in id order, when the files hold 0-based label "
        "ids (default: the labels found in the training file, sorted)",
    )
    delimiter: str = opt(
        None,
        "custom task: field separator of .csv/.tsv/.txt files (default: sniffed from the header)",
        (None, "tab", "comma", "semicolon", "bar"),
    )
    taxonomy: str = opt(
        None,
        "goemotions: train and score in a coarser taxonomy the data set publishes: ekman (6 emotions + neutral) or "
        "sentiment (positive, negative, ambiguous + neutral)",
        (None, "ekman", "sentiment"),
    )
    add_train: tuple = opt(
        None,
        "extra training data, repeatable: a built-in task carried into this task's labels by the map that ships "
        "(semeval into goemotions), or a source .toml naming a data file and its label map (data/sources.py). The "
        "extra examples are trained on, never evaluated on: scores stay on this task's dev set",
    )
    source_weights: tuple = opt(
        None,
        "one weight per --add-train source: its examples count W times (W < 1: a seeded W share of them, W > 1: "
        "repeated), so a large set does not drown the target; default 1 each",
    )
    max_length: int = opt(128, "truncate inputs to this many tokens")
    long_text: str = opt(
        "truncate",
        "texts longer than max_length: truncate them, or chunk them into overlapping windows of max_length whose "
        "logits are averaged (encoders; data/long_text.py)",
        ("truncate", "chunk"),
    )
    chunk_overlap: int = opt(None, "long_text chunk: tokens each window shares with the next (default max_length / 4)")
    max_train_samples: int = opt(None, "use only the first N training examples (after a seeded shuffle)")
    max_eval_samples: int = opt(
        None,
        "use only the first N dev examples (recipe-mpr: of each fold's "
        "validation part; its test part is always scored whole)",
    )
    oversample_rare: int = opt(0, "multi-label: repeat examples of labels with fewer than N positives up to N")
    batch_size: int = opt(32, "examples per micro-batch")
    max_tokens: int = opt(None, "token-budget batches: at most this many padded tokens per micro-batch")
    padding: str = opt(
        None,
        "batching: random batches padded to max_length (fixed) or to their longest (dynamic; encoders run "
        "padding-heavy ones unpadded), or length-bucketed batches, the default (an encoder's multiple choice: "
        "dynamic): on full humor and SemEval they train fastest at the dev score of random batches "
        "(benchmarks/README.md)",
        (None, "fixed", "dynamic", "bucketed"),
    )
    token_cache: str = opt(
        "auto",
        "where tokenized texts are kept for the next run with the same tokenizer and lengths (sweeps, cv, seeds, "
        "resume): auto ($MINITUNE_CACHE_DIR/tokens, else $XDG_CACHE_HOME or ~/.cache, /minitune/tokens), a folder, "
        "or off",
    )
    augmentation: AugmentSettings = section(AugmentSettings)

    def window_overlap(self) -> int | None:
        """Tokens consecutive windows share when texts are chunked; None when they are truncated."""
        if self.long_text != "chunk":
            return None
        return self.max_length // 4 if self.chunk_overlap is None else self.chunk_overlap


@dataclass(frozen=True)
class AdapterSettings:
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning)")
    lora_alpha: float = opt(None, "LoRA alpha (default 2 x rank)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA branch")
    lora_targets: str = opt(None, "comma-separated module-name patterns to wrap with LoRA (default per family)")

    def alpha(self) -> float:
        """`lora_alpha`, by default twice the rank (scaling alpha / r = 2)."""
        return 2.0 * self.lora_r if self.lora_alpha is None else self.lora_alpha

    def targets(self) -> list[str] | None:
        """`lora_targets` as a list of patterns (None: the family's defaults)."""
        if not self.lora_targets:
            return None
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


@dataclass(frozen=True)
class ModelSettings:
    model: str = opt(
        "minilm",
        "model name, Hub id, local directory or .gguf file; `ffnn` for the bag-of-embeddings "
        "baseline; aliases: minilm, smollm2, xlm-roberta-large, roberta-base, ...",
    )
    head: str = opt(
        "classifier",
        "classifier: a classification head on the model; generative: an instruct decoder answers in its chat "
        "format (--epochs 0: zero-/few-shot; more: instruction tuning, e.g. with --lora-r)",
        ("classifier", "generative"),
    )
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
    quantize: str = opt(None, "quantize the frozen base weights: nf4 (QLoRA; needs --lora-r)", (None, "nf4"))
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    compile: bool = opt(False, "torch.compile the model (on CPU it lost, compile time included: benchmarks/README.md)")
    adapter: AdapterSettings = section(AdapterSettings)


@dataclass(frozen=True)
class LossSettings:
    loss: str = opt(None, "ce | bce | focal | asl, or a weighted sum like bce:0.5+asl:0.5 (default ce / bce)")
    label_smoothing: float = opt(0.0, "label smoothing for cross-entropy")
    class_weights: str = opt("none", "class weights for ce / pos_weight for bce", ("none", "balanced"))
    focal_gamma: float = opt(2.0, "focal loss gamma")
    asl_gamma_neg: float = opt(4.0, "asymmetric loss gamma for negatives")
    asl_gamma_pos: float = opt(1.0, "asymmetric loss gamma for positives")
    asl_clip: float = opt(0.05, "asymmetric loss probability margin for negatives")
    loss_weighting: str = opt(
        "fixed",
        "a summed --loss (bce:0.5+asl:0.5): keep its weights (fixed), learn them (uncertainty: learned log-variances, "
        "Kendall et al. 2018) or move them linearly to --loss-weights-end over training (schedule)",
        ("fixed", "uncertainty", "schedule"),
    )
    loss_weights_end: str = opt(None, "--loss-weighting schedule: the weights at the end of training, e.g. 0.2,0.8")
    loss_weight_lr: float = opt(0.01, "--loss-weighting uncertainty: learning rate of the log-variances")


@dataclass(frozen=True)
class AdversarySettings:
    """Adversarial training (train/adversarial.py): each micro-batch is trained on twice, as it is and perturbed."""

    adversarial: str = opt(
        None,
        "train on perturbed inputs too: fgm (one step along the normalised gradient of the word embeddings), pgd "
        "(--adv-steps projected steps in an --adv-eps ball) or awp (adversarial weight perturbation)",
        (None, "fgm", "pgd", "awp"),
    )
    adv_eps: float = opt(
        None,
        "perturbation size: fgm/pgd the L2 norm per example of the word-embedding perturbation (default 0.1; 1.0 "
        "wrecked MiniLM on humor, benchmarks/README.md), awp each weight's perturbation relative to its norm "
        "(default 0.001)",
    )
    adv_alpha: float = opt(None, "pgd: the L2 size of each step (default 0.3 x --adv-eps)")
    adv_steps: int = opt(3, "pgd: steps of the attack")
    adv_start_epoch: int = opt(1, "the epoch (from 1) at which adversarial training starts")


@dataclass(frozen=True)
class LoopSettings:
    """Everything the training loop (train/loop.py `fit`) reads."""

    metric: str = opt(None, "early-stopping metric (default macro_f1; accuracy for recipe-mpr)")
    epochs: int = opt(3, "training epochs")
    max_steps: int = opt(None, "stop after this many optimizer steps (overrides epochs)")
    grad_accum: int = opt(1, "micro-batches per optimizer step (effective batch = batch_size x grad_accum)")
    lr: float = opt(2e-5, "peak learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on biases and norms)")
    warmup_ratio: float = opt(0.1, "share of steps spent in linear warmup")
    warmup_steps: int = opt(None, "optimizer steps of linear warmup (instead of --warmup-ratio)")
    scheduler: str = opt("cosine", "schedule after warmup", ("cosine", "linear", "constant", "plateau"))
    llrd: float = opt(
        None, "layer-wise LR decay in (0, 1]: head at lr, each lower layer x llrd, embeddings lowest (unset: off)"
    )
    clip_grad: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    precision: str = opt(
        "auto",
        "mixed precision: bf16 autocast, fp16 autocast + loss scaler, or auto: bf16 where the hardware computes bf16 "
        "natively (CPU avx512_bf16 / amx_bf16, CUDA 8.0+), else fp32; dev scoring and predict use the same",
        ("auto", "fp32", "bf16", "fp16"),
    )
    patience: int = opt(
        None, "stop after this many evaluations (not epochs) without improvement; default: never stop early"
    )
    eval_every: int = opt(None, "evaluate every N optimizer steps (default: every epoch)")
    log_every: int = opt(10, "log a JSON line to metrics.jsonl every N optimizer steps")
    checkpoint: bool = opt(True, "write resumable checkpoints (--no-checkpoint: a throwaway run, nothing to resume)")
    save_every: int = opt(None, "also checkpoint every N optimizer steps (default: at each evaluation)")
    keep_checkpoints: int = opt(
        None,
        "keep the newest K checkpoints, also once the run has finished (default: the newest one while training, "
        "none once the run has finished: model/ holds the best weights)",
    )
    report_to: str = opt(
        None,
        "also write metrics.jsonl's scalars as TensorBoard events in OUTPUT_DIR/tensorboard, or log the run (settings, "
        "metrics, reports and figures) to MLflow",
        (None, "tensorboard", "mlflow"),
    )
    tracking_uri: str = opt(
        None,
        "with report_to mlflow: the MLflow store (sqlite:///mlflow.db, http://host:5000; default: "
        "MLFLOW_TRACKING_URI, else MLflow's own)",
    )
    adversary: AdversarySettings = section(AdversarySettings)


@dataclass(frozen=True)
class EvalSettings:
    threshold: float = opt(0.5, "multi-label decision threshold reported beside the tuned per-class thresholds")
    threshold_split: float = opt(
        None,
        "multi-label: tune the per-label thresholds on a stratified fraction F of train held out from training "
        "(an honest dev score) instead of on dev itself (optimistic: tuned and scored on the same examples)",
    )
    explain_errors: int = opt(
        5,
        "report.html: the N most confident dev errors, each token highlighted by its integrated-gradients "
        "attribution (eval/attributions.py; 0: none)",
    )
    ig_steps: int = opt(32, "integrated gradients: points on the path from the baseline to the input")
    ig_baseline: str = opt(
        "pad",
        "integrated gradients: the input it starts from: pad (every token but the special ones replaced by the pad "
        "token) or zero (all-zero word embeddings)",
        ("pad", "zero"),
    )


@dataclass(frozen=True)
class GenerativeSettings:
    answer_mode: str = opt(
        "constrained",
        "--head generative: constrained (generation restricted to the labels), score (likelihood of each "
        "label) or free (unconstrained generation, parsed)",
        ("constrained", "score", "free"),
    )
    shots: int = opt(0, "--head generative: few-shot examples drawn stratified from train with --seed")
    prompt_template: str = opt(None, "--head generative: Jinja file for the user turn (text, pair, labels, options)")
    max_new_tokens: int = opt(32, "--head generative --answer-mode free: generation length limit")


@dataclass(frozen=True)
class DistributedSettings:
    fsdp: str = opt(
        None,
        "under torchrun: shard with FSDP2, full (parameters, gradients and optimizer state: ZeRO-3) or grad-op "
        "(parameters kept whole between forward and backward: ZeRO-2); default DDP",
        (None, "full", "grad-op"),
    )
    fsdp_cpu_offload: bool = opt(False, "with --fsdp: keep parameter shards, gradients and optimizer state on CPU")
    dist_timeout: int = opt(600, "under torchrun: seconds a rank waits for the others before the run fails")


@dataclass(frozen=True)
class DistillSettings:
    """`minitune distill` only (its own flags)."""

    teacher: tuple = opt(None, "distill: teacher run, ensemble or cv directories")
    distill_alpha: float = opt(0.5, "distill: weight of the teacher term")
    temperature: float = opt(2.0, "distill: softmax temperature")
    alone: str = opt(None, "distill: an existing run of the same student on gold labels (default: train one)")


@dataclass(frozen=True)
class OutputSettings:
    output_dir: str = opt(
        None,
        "where config, metrics, results and model/ go (default runs/<task>-<model>; cv: runs/cv-<task>-<model>; "
        "distill: runs/distill-<task>-<model>; with --seeds: runs/<task>-<model>-seeds). A folder holds one run",
    )
    resume: str = opt(
        None,
        "continue the run in this folder from its last checkpoint, with its saved settings (flags may be left out)",
    )
    overwrite: bool = opt(False, "start over in an output folder that holds another run: its files are removed first")


COMMANDS = ("train", "cv", "distill")


@dataclass(frozen=True)
class RunConfig:
    data: DataSettings = section(DataSettings)
    model: ModelSettings = section(ModelSettings)
    loss: LossSettings = section(LossSettings)
    loop: LoopSettings = section(LoopSettings)
    eval: EvalSettings = section(EvalSettings)
    generative: GenerativeSettings = section(GenerativeSettings)
    distributed: DistributedSettings = section(DistributedSettings)
    distill: DistillSettings = section(DistillSettings)
    outputs: OutputSettings = section(OutputSettings)
    command: str = opt("train", "what trains: one run (or one per seed), k-fold cv, or a distilled student", COMMANDS)
    seed: int = opt(42, "seed of every RNG (python, numpy, torch, sampler, option shuffle)")
    seeds: tuple = opt(
        None,
        "train and cv: one model per seed (e.g. --seeds 42 123 456), reported each, as mean ± std and as the "
        "ensemble of their mean probabilities",
    )
    folds: int = opt(None, "minitune cv: the number of folds K (default 5)")
    max_folds: int = opt(None, "recipe-mpr training: only the first N of its 5 published folds")
    device: str = opt("auto", "cpu, cuda, or auto")

    def flat(self) -> dict:
        """Every setting under its flag's name (underscored), sections dissolved."""
        return {name: getattr(self.section_of(name), name) for name in FLAT}

    def section_of(self, name: str):
        """The section object that holds setting `name` (self for the top-level ones)."""
        obj = self
        for part in FLAT[name]:
            obj = getattr(obj, part)
        return obj

    def with_settings(self, **flat) -> RunConfig:
        """A copy with these settings (flag names) changed, each routed to its section (not checked again: see the
        module docstring)."""
        return build(self.flat() | flat)


def _index(cls, path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Setting name -> the path of sections that holds it, for every leaf field under `cls`."""
    out: dict[str, tuple[str, ...]] = {}
    for f in fields(cls):
        if f.metadata.get("section"):
            out |= _index(f.default_factory, (*path, f.name))
        else:
            out[f.name] = path
    return out


FLAT: dict[str, tuple[str, ...]] = _index(RunConfig)  # e.g. "lora_r" -> ("model", "adapter")
SECTIONS: dict[str, type] = {}  # section path ("model.adapter") -> its dataclass


def _sections(cls, path: str = "") -> None:
    for f in fields(cls):
        if f.metadata.get("section"):
            name = f"{path}.{f.name}" if path else f.name
            SECTIONS[name] = f.default_factory
            _sections(f.default_factory, name)


_sections(RunConfig)


def setting_field(name: str):
    """The dataclass field of setting `name` (its default, help and choices)."""
    cls = RunConfig
    for part in FLAT[name]:
        cls = next(f for f in fields(cls) if f.name == part).default_factory
    return next(f for f in fields(cls) if f.name == name)


def default_of(name: str):
    f = setting_field(name)
    return f.default if f.default is not MISSING else f.default_factory()


def build(flat: dict) -> RunConfig:
    """A RunConfig from settings under their flat names (missing ones take their defaults); nothing is checked."""
    unknown = set(flat) - set(FLAT)
    if unknown:
        raise KeyError(f"not settings: {sorted(unknown)}")

    def make(cls, path: tuple[str, ...]):
        kwargs = {}
        for f in fields(cls):
            if f.metadata.get("section"):
                kwargs[f.name] = make(f.default_factory, (*path, f.name))
            elif f.name in flat:
                kwargs[f.name] = flat[f.name]
        return cls(**kwargs)

    return make(RunConfig, ())


__all__ = [
    "AdapterSettings",
    "AdversarySettings",
    "AugmentSettings",
    "DataSettings",
    "DistillSettings",
    "DistributedSettings",
    "EvalSettings",
    "GenerativeSettings",
    "LoopSettings",
    "LossSettings",
    "ModelSettings",
    "OutputSettings",
    "RunConfig",
    "FLAT",
    "SECTIONS",
    "build",
    "default_of",
    "setting_field",
]
