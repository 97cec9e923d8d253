"""Everything a run reads before it writes anything: the task's files, --test-file, --predict-file, the model's
config and tokenizer, and a checkpoint to resume. What the files say goes to config/validate.resolve, which checks
the settings that depend on it and returns the run's final config; so a mistake costs seconds, not a run, and
leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from minitune.checkpoints.load import choice_scorer_for, load_tokenizer, model_type_of
from minitune.checkpoints.runlock import finished_before
from minitune.config.load import run_signature
from minitune.config.sections import DataSettings, RunConfig
from minitune.config.validate import Facts, resolve, resolve_device
from minitune.data.custom import DELIMITERS_BY_NAME, Columns, Row, read_rows
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.data.paraphrase import check_paraphrase_model
from minitune.data.sources import add_sources
from minitune.data.tasks import Example, TaskData, label_array, load_eval_file, load_task, resolve_data_dir
from minitune.data.tokenizer import Tokenizer
from minitune.errors import ConfigError
from minitune.models import family_for
from minitune.train import distributed
from minitune.train.amp import choose_precision
from minitune.train.checkpoint import check_resumable

log = logging.getLogger("minitune")

# Text columns of the tasks' own unlabelled files (--predict-file), where it is not "text" (`text_col` wins).
TEXT_COLUMNS = {"semeval": "Tweet"}


@dataclass
class RunInputs:
    """The task, the tokenizer, --test-file's examples, --predict-file's rows, a distillation teacher
    (experiments/distill.Teacher) when one teaches, and a search's pruner (experiments/search.py) when one judges."""

    task: TaskData
    tokenizer: Tokenizer
    test: list[Example] | None = None
    unlabelled: list[Row] | None = None
    teacher: object = None
    judge: object = None  # (k-th evaluation, step, value) -> why to stop the run, or None
    precision_reason: str = "set by `precision`"  # why the run computes in its precision (train/amp.py)


def prepare(cfg: RunConfig) -> tuple[RunConfig, RunInputs]:
    """(the run's final config, what it reads), every input checked."""
    task = read_task(cfg.data, cfg.seed)
    cfg = resolve(cfg, facts(cfg, task))
    precision, precision_reason = run_precision(cfg)
    cfg = replace(cfg, loop=replace(cfg.loop, precision=precision))  # saved as chosen, so a resume keeps it
    test = load_eval_file(task, cfg.data.test_file) if cfg.data.test_file else None
    unlabelled = read_unlabelled(cfg.data) if cfg.data.predict_file else None
    if cfg.outputs.resume:
        check_resume(cfg, task)
    if cfg.data.augmentation.paraphrase_model:
        check_paraphrase_model(cfg.data.augmentation.paraphrase_model)
    tokenizer = load_tokenizer(tokenizer_name(cfg))
    if tokenizer.pad_token_id is None:
        log.warning("%s has no pad token: using its eos token for padding", cfg.model.model)
        tokenizer.set_pad_to_eos()
    return cfg, RunInputs(task, tokenizer, test, unlabelled, precision_reason=precision_reason)


def run_precision(cfg: RunConfig) -> tuple[str, str]:
    """(the precision the run computes in, why): as set, or for auto the hardware's choice (train/amp.py); a resumed
    run that auto began keeps what it chose then, as its config.json saved it, on whatever machine it continues."""
    if cfg.outputs.resume:
        try:
            saved = json.loads((Path(cfg.outputs.output_dir) / "config.json").read_text(encoding="utf-8"))
            chosen = saved.get("loop", saved)["precision"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            chosen = None
        if chosen in ("fp32", "bf16", "fp16") and cfg.loop.precision in ("auto", chosen):
            return chosen, f"as the resumed run began (its config.json: {chosen})"
    if cfg.loop.precision == "auto" and cfg.model.head == "generative":
        # its answers are generated and scored in fp32 (eval/answers.py), so it trains in fp32 too
        return "fp32", "auto: the generative head generates and scores its answers in fp32"
    return choose_precision(cfg.loop.precision, resolve_device(cfg.device))


def read_task(data: DataSettings, seed: int) -> TaskData:
    """The task's examples from the data settings (a custom task's file, columns and separator), with the examples
    of its extra training sources carried into its labels (`task.added`)."""
    custom = {}
    if data.task == "custom":
        delimiter = DELIMITERS_BY_NAME.get(data.delimiter)
        custom = dict(text_col=data.text_col, label_col=data.label_col, pair_col=data.pair_col, delimiter=delimiter)
    data_dir = resolve_data_dir(data.data_dir)
    task = load_task(
        data.task,
        data_dir,
        seed=seed,
        train_file=data.train_file,
        dev_file=data.dev_file,
        label_names=data.label_names,
        taxonomy=data.taxonomy,
        **custom,
    )
    if data.add_train:
        read_source = lambda name, **files: load_task(name, data_dir, seed=seed, **files)  # noqa: E731
        add_sources(task, data.add_train, data.source_weights, read_source, seed)
    return task


def tokenizer_name(cfg: RunConfig) -> str:
    return "minilm" if cfg.model.model == "ffnn" else cfg.model.model  # the baseline borrows MiniLM's tokenizer


def facts(cfg: RunConfig, task: TaskData) -> Facts:
    """What the task's and the model's files say, for the checks that need them."""
    name = cfg.model.model
    model_type = usable = scorer = None
    if name != "ffnn":
        path, model_type, hf_config = model_type_of(name)
        if hf_config is not None:
            usable = family_for(model_type, path).usable_positions(hf_config)
        if task.kind == MULTIPLE_CHOICE and cfg.model.head == "classifier":
            scorer = choice_scorer_for(name, cfg.model.choice_scorer)
    train_labels = label_array(task, task.train)
    return Facts(task.kind, task.num_labels, train_labels, bool(task.dev), len(task.train), model_type, usable, scorer)


def read_unlabelled(data: DataSettings) -> list[Row]:
    """--predict-file's rows, read before training so a wrong path or column costs seconds, not a run."""
    text_col = data.text_col if data.text_col != "text" else TEXT_COLUMNS.get(data.task, "text")
    columns = Columns(text=text_col, label=None, pair=data.pair_col)
    return read_rows(Path(data.predict_file), columns, DELIMITERS_BY_NAME.get(data.delimiter), keep_empty=True)


def check_resume(cfg: RunConfig, task: TaskData) -> None:
    """The checkpoints a `resume` continues from exist and were made with these settings. A cv, folds or seeds run
    may have none yet (stopped before its first); the members of `seeds` are checked as each one loads (their
    checkpoints hold their own seed)."""
    out = Path(cfg.outputs.output_dir)
    if finished_before(out):
        return  # nothing to continue: the run prints its report
    if not (task.folds or cfg.command == "cv" or cfg.seeds):
        dirs = [out]
    elif not out.is_dir():
        raise ConfigError(f"`resume` {out}: no such run; start without `resume`")
    else:
        dirs = [] if cfg.seeds else sorted(c.parent for c in out.glob("**/checkpoint") if c.is_dir())
    for d in dirs:
        distributed.check_world_size(d / "checkpoint" / "signature.json")
        check_resumable(d / "checkpoint", run_signature(cfg))
