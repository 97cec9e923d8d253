"""A run directory's own files, besides its checkpoints and model/: what protocols write and what predict, distill,
compare, report and the ensembles read back.

    config.json      the run's settings (config/load.py `dump`)
    results.json     the report's dict (eval/report.py `write_results`)
    metrics.jsonl    one record per log and evaluation (train/metrics_log.py)
    scores.npz       the run's probabilities per split: dev, test and, for cv, oof, each (N, C) in the split's order
    members.json     an ensemble's, a cv run's or Recipe-MPR's models: {"kind": "seeds" | "cv" | "folds",
                     "members": [sub-directories]}, each an ordinary run directory (or, for seeds of cv, a cv one)
    thresholds.json  the per-label thresholds an ensemble or cv run tuned (a single run keeps them in model/)
    oof_index.npy    cv: which training examples (indices into the task's train) oof.csv's rows are
    fold{k}/fold_scores.npz, fold_summary.json   a finished fold: its probabilities and its loop summary
and what a person is told about them: where a run went and how to use it, or what an interruption left to resume.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from minitune.checkpoints.atomic import atomic_write, atomic_write_text
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.data.long_text import CHUNK_KEY
from minitune.errors import ConfigError
from minitune.train.checkpoint import read_progress

SCORES, MEMBERS, THRESHOLDS = "scores.npz", "members.json", "thresholds.json"
OOF_INDEX = "oof_index.npy"
FOLD_SCORES, FOLD_SUMMARY = "fold_scores.npz", "fold_summary.json"
GENERATIVE_FILE = "generative.json"  # beside a `head` generative run's model: how predict asks it (instruct.py)
PROMPT_EXAMPLE = "prompt_example.txt"


def damaged_fix(path: Path) -> str:
    """What to do about a damaged run file: an unfinished run writes it again when it finishes (--resume); a
    finished one kept no checkpoint to rebuild it from, so it is trained again."""
    for run_dir in list(Path(path).parents)[:3]:
        try:
            marker = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(marker, dict) and marker.get("status") == "finished":
            return (
                f"the run finished and kept nothing to rebuild it from: rerun the command that made {run_dir} with "
                "--overwrite, or remove the run"
            )
        if isinstance(marker, dict):
            return f"continue the run, which writes it again: minitune --resume {run_dir}"
    return "remove the file's run, or train it again"


def read_json(path: Path, fix: str | None = None) -> dict:
    """A run file's JSON, read defensively: a file that is not valid JSON (truncated, or half-written by a process
    that was killed) is one line naming it and what to do (`fix`), never a traceback."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; {fix or 'pass the output directory of a finished run'}") from None
    except (ValueError, UnicodeDecodeError) as e:
        what = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise ConfigError(
            f"{path}: not valid JSON ({what}); the file is truncated or half-written: {fix or damaged_fix(path)}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: holds a JSON {type(data).__name__}, not the object minitune writes; the file is damaged: "
            f"{fix or damaged_fix(path)}"
        )
    return data


def read_jsonl(path: Path) -> list[dict]:
    """A JSON-lines run file (metrics.jsonl, predictions_<split>.jsonl). A last line cut short by a kill is dropped;
    a damaged line before it is one error line naming the file and the line."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break  # the line a killed process was writing
            raise ConfigError(
                f"{path}, line {i + 1}: not valid JSON; the file is damaged: {damaged_fix(path)}"
            ) from None
    return records


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def save_scores(run_dir: Path, **arrays: np.ndarray | None) -> None:
    """A run's probabilities per split (None: the run has no such split), for ensembles and teachers."""
    _write_npz(Path(run_dir) / SCORES, {k: v for k, v in arrays.items() if v is not None})


def read_scores(run_dir: Path) -> dict[str, np.ndarray]:
    path = Path(run_dir) / SCORES
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {SCORES}; pass the output directory of a finished training run")
    return read_npz(path)


def save_oof_index(run_dir: Path, index: np.ndarray) -> None:
    """cv: which training examples oof.csv's rows are (indices into the task's train), for an ensemble of cv runs."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file, not a name: np.save would add .npy to the temporary name
            np.save(f, index)

    atomic_write(Path(run_dir) / OOF_INDEX, write)


def write_prompt_example(run_dir: Path, text: str) -> None:
    """`head` generative: the first dev prompt as the model read it."""
    atomic_write_text(Path(run_dir) / PROMPT_EXAMPLE, text)


def read_npy(path: Path) -> np.ndarray:
    """One saved array (oof_index.npy), read defensively."""
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(
            f"{path}: cannot be read ({type(e).__name__}); the file is damaged: {damaged_fix(path)}"
        ) from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """A run's arrays (scores.npz, fold scores), read defensively: a damaged file is one line naming it."""
    try:
        with np.load(path) as saved:
            return dict(saved)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(
            f"{path}: cannot be read ({type(e).__name__}); the file is damaged: {damaged_fix(path)}"
        ) from None


def write_members(out: Path, kind: str, members: list[str]) -> None:
    atomic_write_text(Path(out) / MEMBERS, json.dumps({"kind": kind, "members": members}, indent=2) + "\n")


def write_thresholds(out: Path, thresholds: dict) -> None:
    atomic_write_text(Path(out) / THRESHOLDS, json.dumps(thresholds, indent=2) + "\n")


def member_model_dirs(path: Path) -> list[Path]:
    """The model directories behind a run, ensemble or cv directory (or a model directory itself)."""
    path = Path(path)
    if (path / MEMBERS).is_file():
        listed = read_json(path / MEMBERS)
        members = listed.get("members")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"{path / MEMBERS}: not a members list; the file is damaged: train the run again")
        return [m for sub in listed["members"] for m in member_model_dirs(path / sub)]
    if (path / "model" / "config.json").is_file():
        return [path / "model"]
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return [path]
    raise ConfigError(
        f"{path}: not a training run, ensemble or cv directory (no model/, no {MEMBERS}); pass a run's output directory"
    )


def model_dir_of(path: Path) -> Path:
    """A model directory, or a run's output directory (its model/ inside; the run's own config.json is not one, so
    a run folder, marked by run.json, always means its model/, present or not)."""
    is_run = (path / "run.json").is_file() or (path / "model").is_dir()
    return path / "model" if is_run or (path / "model" / "config.json").is_file() else path


def trained_max_length(model_dir: Path, default: int = 128) -> int:
    """The max_length the run trained with: the nearest run config.json above model/ (a cv fold's model sits in
    fold{k}/, its run's config one or two levels up), else `default`. A run's config holds its `data` section (or,
    written by an earlier version, flat settings)."""
    try:  # a model trained on windows says how long they were (it may have left its run folder)
        return int(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))[CHUNK_KEY]["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = _run_setting(model_dir, "data", "max_length")
    return default if value is None else int(value)


def trained_precision(model_dir: Path, default: str = "fp32") -> str:
    """The precision the run trained (and scored dev) in, as its config.json saved it (auto already chosen), else
    `default`: predict scores in it too."""
    value = _run_setting(model_dir, "loop", "precision")
    return value if isinstance(value, str) and value != "auto" else default


def _run_setting(model_dir: Path, section: str, key: str):
    """A setting from the nearest run config.json above model/ (a cv fold's model sits in fold{k}/, its run's config
    one or two levels up), or None. A run's config holds its sections (or, written by an earlier version, flat
    settings); a checkpoint's own config.json, which has no `task`, is not a run's."""
    for run_dir in list(Path(model_dir).parents)[:4]:
        try:
            saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
            if "task" in saved.get("data", saved):
                return saved.get(section, saved)[key]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


def read_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no results.json; pass the output directory of a finished run")
    results = read_json(path)
    if not any(isinstance(results.get(split), dict) for split in ("dev", "test", "oof")):
        raise ConfigError(
            f"{path}: holds no split's scores (dev, test or oof); the file is damaged: {damaged_fix(path)}"
        )
    return results


def loss_at_best(run_dir: Path, best_step: int | None) -> dict:
    """The dev loss of the best evaluation and the training loss last logged before it, from metrics.jsonl."""
    train = dev = None
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        for row in read_jsonl(path):
            if row.get("step", 0) <= (best_step or 0):
                if row.get("type") == "train":
                    train = row.get("loss")
                elif row.get("type") == "eval" and row.get("step") == best_step:
                    dev = row.get("loss", dev)
    return {"train": train, "dev": dev}


def write_fold(fold_dir: Path, held_out: np.ndarray, scores: np.ndarray, extra: dict, summary: dict) -> None:
    """A finished fold: its held-out indices and probabilities, those on each further set, its loop summary."""
    _write_npz(fold_dir / FOLD_SCORES, {"held_out": held_out, "scores": scores, **extra})
    atomic_write_text(fold_dir / FOLD_SUMMARY, json.dumps(summary, default=str) + "\n")


def read_fold(fold_dir: Path) -> tuple[np.ndarray, np.ndarray, dict, dict] | None:
    """(held_out, scores, extra, summary) of a fold written by `write_fold`, or None when it did not finish."""
    if not (fold_dir / FOLD_SCORES).is_file() or not (fold_dir / FOLD_SUMMARY).is_file():
        return None
    arrays = read_npz(fold_dir / FOLD_SCORES)
    summary = read_json(fold_dir / FOLD_SUMMARY)
    return arrays.pop("held_out"), arrays.pop("scores"), arrays, summary


def saved_note(out: Path, kind: str, text_col: str, command: str, checkpointed: bool) -> str:
    """Where the run went and the command that uses it."""
    preds = "test_predictions.csv" if (out / "test_predictions.csv").is_file() else "dev_predictions.csv"
    ensemble = (out / MEMBERS).is_file()  # seeds, cv or folds: predict averages the members
    model = (out / "model" / "config.json").is_file()
    kept = "model/, report.txt, results.json, metrics.jsonl"
    if ensemble:
        kept = f"{MEMBERS}, {'model/, ' if model else ''}report.txt, results.json"
        preds = "oof.csv" if (out / "oof.csv").is_file() else preds
    lines = [f"saved to {out}/ ({kept}, {preds})"]
    if kind == MULTIPLE_CHOICE:  # predict puts no questions with options to a generative model
        if (ensemble or model) and not (out / "model" / GENERATIVE_FILE).is_file():
            lines.append(
                f"answer questions with it: minitune predict --model {out} --input QUESTIONS.jsonl --output "
                "answers.csv (each line a query and its options)"
            )
    elif ensemble or (model and not (out / "fold0").is_dir()):
        col = "" if text_col == "text" else f" --text-col {text_col}"
        lines.append(
            f"label a file with it: minitune predict --model {out} --input FILE.csv --output predictions.csv{col}"
        )
    if checkpointed:
        cmd = "" if command == "train" else f"{command} "
        lines.append(f"re-report it (or continue it if stopped): minitune {cmd}--resume {out}")
    return "\n".join(lines) + "\n"


def worth_keeping(out: Path) -> bool:
    """Whether a stopped run's folder holds anything a resume continues from or a person would miss: a checkpoint,
    a finished fold's probabilities, a saved model, or a finished run inside it (a member of `seeds`)."""
    out = Path(out)
    kept = ("**/checkpoint", f"**/{FOLD_SCORES}", "**/model/config.json", "**/model/adapter_config.json")
    if any(any(out.glob(pattern)) for pattern in kept):
        return True
    for marker in out.glob("*/**/run.json"):
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("status") == "finished":
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def interruption_note(out: Path, checkpointed: bool, command: str = "") -> str:
    """What an interruption left behind, said truthfully: the newest checkpoint on disk, finished parts of the run
    (folds, seeds) without one, or nothing to resume."""
    found = [
        (p["step"], d) for d in [out / "checkpoint", *sorted(out.glob("*/**/checkpoint"))] if (p := read_progress(d))
    ]
    command = f"{command} " if command else ""
    if not found and out.is_dir() and worth_keeping(out):
        return (
            f"interrupted: the finished parts of the run are kept in {out}; continue with: minitune {command}--resume "
            f"{out}"
        )
    if not found:
        why = " (--no-checkpoint)" if not checkpointed else ""
        return f"interrupted before any checkpoint was written{why}: nothing to resume; start the run again"
    step, where = max(found, key=lambda f: f[1].stat().st_mtime_ns)  # the newest written
    return f"interrupted: checkpoint at step {step} in {where}; continue with: minitune {command}--resume {out}"


def _plain(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, tuples to lists, paths to str, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(path: str | os.PathLike, results: dict) -> None:
    """results.json: `results` as indented JSON, written atomically (a temporary file in the same directory, fsync,
    then os.replace, so a crash or a full disk never leaves it truncated). numpy values become Python numbers or
    lists; NaN and infinities (a diverged loss) become null, since JSON has no such values."""
    path = Path(path)
    text = json.dumps(_plain(results), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write results ({exc.strerror}); choose a writable `output_dir`") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; results are meant to be shared
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write results ({exc.strerror}); choose a writable `output_dir`") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
