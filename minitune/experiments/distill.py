"""`minitune distill --teacher DIR [DIR...] --model STUDENT`: train a (smaller) student on a teacher's probabilities.

The teacher is a run, a `--seeds` ensemble or a cv directory (several: the mean of all their models). Its
probabilities on the training examples are computed once and cached in the student's output directory
(teacher_probs.npz, keyed by each example's text and by the teacher's model files), so a resumed or repeated
run does not score the training data again. The loss is train.losses.DistillLoss: alpha * KL at temperature T
(x T^2) for single-label and multiple choice, per-label binary cross-entropy on the soft targets for multi-label,
plus (1 - alpha) * the task loss on gold labels.

The report (distill.md and distill.json, also printed) puts the distilled student beside the teacher and beside the
same student trained alone on gold labels (in alone/, or an existing run given with --alone), all on the same dev
examples (Recipe-MPR: its folds' test parts), and gives the predict-time speed ratio teacher / student on them (one
pass each, after the models are loaded; the teacher's time is all its members').
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.atomic import atomic_write, atomic_write_text
from minitune.checkpoints.rundir import member_model_dirs, read_npz, read_results
from minitune.checkpoints.runlock import RunIdentity, finish, finished_before, locked, require_finished
from minitune.config.sections import RunConfig, default_of
from minitune.config.validate import resolve_device
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.data.tasks import Example, TaskData
from minitune.errors import ConfigError
from minitune.eval.finish import headline, uses_tuned
from minitune.eval.members import ensemble_scores, load_member, member_scores
from minitune.eval.metrics import classification_report
from minitune.eval.predictions import read_prediction_records
from minitune.train.distributed import is_main

CACHE = "teacher_probs.npz"


def example_key(ex: Example) -> str:
    text = json.dumps([ex.text, ex.pair, ex.choices], ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass
class Teacher:
    """The teacher's model directories, the loss weights, and where its probabilities are cached."""

    model_dirs: list[Path]
    alpha: float
    temperature: float
    cache: Path
    batch_size: int = 64
    _probs: dict[str, np.ndarray] = field(default_factory=dict)

    def identity(self) -> str:
        """Which teacher the cache holds: its model files and their sizes and times."""
        files = [
            (str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
            for d in self.model_dirs
            for f in sorted(d.glob("*.safetensors"))
        ]
        return hashlib.sha1(json.dumps(files).encode()).hexdigest()

    def targets_for(self, task: TaskData, examples: list[Example], device: torch.device) -> np.ndarray:
        """The teacher's probabilities (N, C) on examples: read from the cache, the missing ones computed once."""
        if not self._probs and self.cache.is_file():
            try:
                saved = read_npz(self.cache)
            except ConfigError:  # a cache damaged by a kill: the probabilities are computed again
                saved = {}
            if "teacher" in saved and str(saved["teacher"]) == self.identity():
                self._probs = dict(zip(saved["keys"].tolist(), saved["probs"]))
        keys = [example_key(ex) for ex in examples]
        missing = [ex for ex, k in zip(examples, keys) if k not in self._probs]
        if missing:
            probs, names = ensemble_scores(self.model_dirs, missing, task.kind, self.batch_size, device)
            check_labels(task, names, probs, self.model_dirs[0])
            self._probs.update(zip(map(example_key, missing), probs))
            self._save()
        return np.stack([self._probs[k] for k in keys])

    def _save(self) -> None:
        keys = list(self._probs)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(
                    f, teacher=self.identity(), keys=np.array(keys), probs=np.stack([self._probs[k] for k in keys])
                )

        self.cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.cache, write)


def check_labels(task: TaskData, names: list[str] | None, probs: np.ndarray, where: Path) -> None:
    if task.kind == MULTIPLE_CHOICE:
        return
    if probs.shape[1] != task.num_labels or (names and list(names) != list(task.label_names)):
        raise ConfigError(
            f"`teacher` {where}: its labels {names} are not the task's {task.label_names}; distil from a teacher "
            "trained on the same task"
        )


def make_teacher(paths: list[str], alpha: float, temperature: float, out: Path, batch_size: int) -> Teacher:
    """The teacher in `paths` (runs, ensembles, cv directories: all their models), its probabilities cached in
    `out`."""
    dirs = []
    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(f"`teacher` {p}: no such directory; pass a training run's output directory")
        require_finished(Path(p), "teacher")
        dirs += member_model_dirs(Path(p))
    return Teacher(dirs, alpha, temperature, out / CACHE, batch_size)


def run_distill(cfg: RunConfig, train: Callable[..., dict]) -> dict:
    """The distilled student in its output directory, the student alone (alone/ or `alone`), then the comparison.
    `train(cfg, teacher)` trains one run (runner.run_train)."""
    out, d = Path(cfg.outputs.output_dir), cfg.distill
    teacher = make_teacher(list(d.teacher), d.distill_alpha, d.temperature, out, cfg.data.batch_size * 2)
    alone_dir = Path(d.alone) if d.alone else out / "alone"
    if d.alone:  # checked before anything trains
        require_finished(alone_dir, "alone")
        check_alone(cfg, alone_dir, read_results(alone_dir))
    distilled = train(cfg, teacher=teacher)
    if d.alone is None:
        started = finished_before(alone_dir) or any(alone_dir.glob("**/checkpoint"))
        resume = str(alone_dir) if cfg.outputs.resume and started else None
        no_teacher = {k: default_of(k) for k in ("teacher", "distill_alpha", "temperature", "alone")}
        train(cfg.with_settings(command="train", output_dir=str(alone_dir), resume=resume, **no_teacher))
    if not is_main():
        return compare_distillation(cfg, teacher, out, alone_dir, distilled)
    with locked(out):  # the run is finished once the comparison is written: until then `resume` continues it
        summary = compare_distillation(cfg, teacher, out, alone_dir, distilled)
        finish(out, RunIdentity(cfg.command, cfg.data.task, cfg.model.model), cfg.loop.keep_checkpoints is not None)
    return summary


def check_alone(cfg: RunConfig, alone_dir: Path, alone: dict) -> None:
    """`alone` must be the same student on the same task, or the comparison compares nothing."""
    theirs = (alone.get("task"), alone.get("model"))
    if theirs != (cfg.data.task, cfg.model.model):
        raise ConfigError(
            f"`alone` {alone_dir} is a run of {theirs[0]} with {theirs[1]}, not of the student ({cfg.data.task} "
            f"with {cfg.model.model}): pass a run of the same task and model, or leave `alone` out to train one"
        )
    saved = alone.get("config") or {}
    for name in ("taxonomy", "add_train", "source_weights"):  # the same labels and the same training data
        mine = getattr(cfg.data, name)
        mine = list(mine) if isinstance(mine, tuple) else mine
        if saved.get(name) != mine:
            raise ConfigError(
                f"`alone` {alone_dir} trained with `{name}` {saved.get(name)}, the student with {mine}: pass a run "
                "on the same data, or leave `alone` out to train one"
            )


def scored_split(results: dict) -> str:
    """The split a run is judged on: dev, or for Recipe-MPR's folds their held-out test parts."""
    return "dev" if "dev" in results else "test"


def split_examples(run_dir: Path, split: str) -> list[Example]:
    """The examples a run scored on `split`, from its predictions records, in its order."""
    records = read_prediction_records(run_dir, split) or []
    return [Example(r["text"], r.get("pair"), r["gold"], r.get("choices")) for r in records]


def timed_scores(model_dirs: list[Path], examples, kind: str, device) -> tuple[np.ndarray, float]:
    """The models' mean probabilities on examples, and the seconds scoring took once they were loaded."""
    members = [load_member(d, kind, device) for d in model_dirs]
    t0 = time.perf_counter()
    scores = np.mean([member_scores(m, examples, kind, 64, device) for m in members], axis=0)
    return scores, time.perf_counter() - t0


def compare_distillation(cfg: RunConfig, teacher: Teacher, out: Path, alone_dir: Path, distilled: dict) -> dict:
    split = scored_split(distilled)
    kind = distilled[split]["kind"]
    examples = split_examples(out, split)
    device = resolve_device(cfg.device)
    t_scores, t_time = timed_scores(teacher.model_dirs, examples, kind, device)
    _, s_time = timed_scores(member_model_dirs(out), examples, kind, device)  # Recipe-MPR: its fold models
    alone = read_results(alone_dir)
    rows = {
        "teacher": {"dirs": [str(d) for d in teacher.model_dirs], "predict_seconds": round(t_time, 3)},
        "student_alone": headline(kind, alone[split], uses_tuned(alone)),
        "student_distilled": headline(kind, distilled[split], uses_tuned(distilled)),
    }
    if split == "dev":
        rows["teacher"] |= teacher_scores(kind, distilled[split], distilled["config"]["threshold"], examples, t_scores)
    # else Recipe-MPR: the folds' test parts are every item, and the teacher trained on most of them, so its
    # score there would flatter it; only the students, each scored on items its fold held out, are compared
    rows["student_distilled"]["predict_seconds"] = round(s_time, 3)
    summary = {
        "alpha": teacher.alpha,
        "temperature": teacher.temperature,
        "split": split,
        "examples": len(examples),
        "speed_ratio_teacher_over_student": round(t_time / max(s_time, 1e-9), 2),
        "rows": rows,
    }
    atomic_write_text(out / "distill.json", json.dumps(summary, indent=2) + "\n")
    text = distill_markdown(summary)
    atomic_write_text(out / "distill.md", text)
    print(text)
    return summary


def teacher_scores(kind: str, report: dict, threshold: float, examples: list[Example], scores: np.ndarray) -> dict:
    """The teacher's scores on the student's examples (multi-label: at the student's fixed threshold)."""
    gold = np.array([ex.label for ex in examples])
    return headline(
        kind, classification_report(kind, gold, scores, list(report["per_class"]), threshold=threshold), False
    )


def distill_markdown(summary: dict) -> str:
    rows = summary["rows"]
    keys = [k for k in rows["student_alone"] if k != "predict_seconds"]
    lines = [
        f"# Distillation (alpha {summary['alpha']}, temperature {summary['temperature']}, "
        f"{summary['examples']} {summary['split']} examples)",
        "",
        "| model | " + " | ".join(keys) + " | predict s |",
        "|---|" + "---:|" * (len(keys) + 1),
    ]
    for name, row in rows.items():
        cells = [f"{row[k]:.4f}" if isinstance(row.get(k), float) else "" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row.get('predict_seconds', '')} |")
    if summary["split"] != "dev":
        lines += ["", "teacher: no score here (it trained on most of the folds' test items, so it would flatter it)"]
    lines += ["", f"predict-time speed ratio teacher / student: {summary['speed_ratio_teacher_over_student']}x", ""]
    return "\n".join(lines)
