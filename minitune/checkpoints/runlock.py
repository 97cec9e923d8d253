"""One run per folder: the run's marker, a lock, and a finish that is atomic.

- run.json, written first and rewritten last, says whose folder this is and whether that run finished:
  {"command", "task", "model", "status": "running" | "finished", "started", "finished"}. A run is finished only when
  this marker says so; it is rewritten (atomically) as the very last write of a run, after results, reports,
  predictions and model/. A kill at any earlier moment leaves a run marked "running": `--resume` continues it
  (training is over when its checkpoint says so, and the finishing writes are done again from the best weights).
- .lock holds the PID and host of the process that owns the folder while it runs; a second process stops at once
  with one line naming the holder. A lock whose process is gone (on this host) is stale and taken over.
- A new run never writes into a folder that holds another run (finished or not, of any command, task or model):
  it refuses in one line offering `resume` or `overwrite`. `overwrite` first marks the folder as the new,
  unfinished run, then clears everything else: a kill while clearing leaves an unfinished run, never an old
  finished one with files missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.rundir import read_json
from minitune.errors import ConfigError
from minitune.train.checkpoint import read_progress, rotated
from minitune.train.distributed import any_rank, is_main

RUN_FILE, LOCK_FILE = "run.json", ".lock"
# Files that mark a folder written by an earlier minitune run without run.json (before run folders had markers).
LEGACY_MARKS = ("config.json", "results.json", "checkpoint", "metrics.jsonl", "members.json")


@dataclass(frozen=True)
class RunIdentity:
    command: str
    task: str
    model: str

    def describe(self) -> str:
        return f"{self.command} run of {self.task} with {self.model}"


def read_run(out: Path) -> dict | None:
    """The folder's run.json, or None when it has none."""
    path = Path(out) / RUN_FILE
    return read_json(path, fix=f"remove {path} and resume or overwrite the run") if path.is_file() else None


def is_finished(out: Path) -> bool:
    run = read_run(out)
    return bool(run and run.get("status") == "finished")


def describe_folder(out: Path) -> str | None:
    """What run the folder holds, in words ("a finished cv run of humor with minilm"), or None for a folder that
    holds no run (absent, empty, or only a stale lock)."""
    out = Path(out)
    if not out.is_dir():
        return None
    run = read_run(out)
    if run is not None:
        state = "finished" if run.get("status") == "finished" else "unfinished"
        who = RunIdentity(run.get("command", "train"), run.get("task", "?"), run.get("model", "?"))
        return f"a{'n' if state == 'unfinished' else ''} {state} {who.describe()}"
    if any((out / name).exists() for name in LEGACY_MARKS):
        return "a run written by an earlier minitune"
    if any(p.name != LOCK_FILE for p in out.iterdir()):
        return "files that are not a minitune run"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(out: Path) -> Path:
    """Take the folder's lock (creating the folder), or stop in one line naming the process that holds it. A lock
    left by a process that is gone, on this host, is taken over."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"`output_dir` {out} is a file: choose a folder") from None
    lock = out / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and (holder.get("host") != me["host"] or _alive(int(holder.get("pid", -1)))):
                raise ConfigError(
                    f"`output_dir` {out} is in use by another minitune run (PID {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('started')}): wait for it to end, or choose another "
                    "`output_dir`"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return lock
    raise ConfigError(f"`output_dir` {out}: another process took its lock at the same moment; try again")


def _holder(lock: Path) -> dict | None:
    """The lock's owner, or None when the lock file is unreadable (half-written by a process that was killed)."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) and "pid" in holder else None
    except (OSError, ValueError):
        return None


def release_lock(out: Path) -> None:
    lock = Path(out) / LOCK_FILE
    holder = _holder(lock) if lock.is_file() else None
    if holder is not None and holder.get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def claim(out: Path, who: RunIdentity, resume: bool, overwrite: bool) -> None:
    """Make `out` this run's folder (its lock already held): check what it holds, clear it for `overwrite`, and
    mark it as this run's, unfinished. `resume`: the folder must hold an unfinished (or finished) run of the same
    command, task and model."""
    out = Path(out)
    held = describe_folder(out)
    if resume:
        _check_resumed(out, who, held)
        return
    if held is not None and not overwrite and not _nothing_to_lose(out):
        if held.startswith("a finished"):
            raise ConfigError(
                f"`output_dir` {out} holds {held}: start over there with `overwrite`, or choose another `output_dir` "
                f"(`resume` {out} prints its report)"
            )
        raise ConfigError(
            f"`output_dir` {out} holds {held}: continue it with `resume` {out}, start over there with `overwrite`, "
            "or choose another `output_dir`"
        )
    if held == "files that are not a minitune run" and overwrite:
        raise ConfigError(
            f"`output_dir` {out} holds files that are not a minitune run; `overwrite` clears run folders only: "
            "choose another `output_dir`"
        )
    mark(out, who, "running")  # first: from here on the folder is this run's, unfinished
    for p in out.iterdir():
        if p.name not in (RUN_FILE, LOCK_FILE):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _nothing_to_lose(out: Path) -> bool:
    """An unfinished run killed before its first checkpoint: nothing there to resume or to keep."""
    run = read_run(out)
    if run is None or run.get("status") == "finished":
        return False
    return not any(out.glob("**/checkpoint")) and not any(out.glob("**/fold_scores.npz"))


def _check_resumed(out: Path, who: RunIdentity, held: str | None) -> None:
    if held is None or held == "files that are not a minitune run":
        raise ConfigError(f"`resume` {out}: no run there to continue; start without `resume`")
    run = read_run(out)
    if run is None:
        return  # an earlier minitune's run: its checkpoint's settings are checked as before
    theirs = RunIdentity(run.get("command", "train"), run.get("task", "?"), run.get("model", "?"))
    if theirs != who:
        raise ConfigError(
            f"`resume` {out} holds a {theirs.describe()}, not a {who.describe()}: resume it with its own "
            f"command and settings (minitune {'' if theirs.command == 'train' else theirs.command + ' '}"
            f"--resume {out})"
        )


def mark(out: Path, who: RunIdentity, status: str) -> None:
    """Write run.json: whose run this is, and whether it finished. Finishing keeps the start time."""
    out = Path(out)
    run = {"command": who.command, "task": who.task, "model": who.model, "status": status}
    started = (read_run(out) or {}).get("started") if status == "finished" else None
    run["started"] = started or time.strftime("%Y-%m-%d %H:%M:%S")
    if status == "finished":
        run["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_text(out / RUN_FILE, json.dumps(run, indent=2) + "\n")


def require_finished(path: Path, what: str = "model") -> None:
    """A run folder (or a model folder inside one) that a command reads must be finished: an unfinished run's files
    may be from the middle of its finishing writes. Folders without run.json (earlier runs, plain checkpoints)
    pass."""
    path = Path(path)
    for run_dir in (path, path.parent, path.parent.parent):
        if (run_dir / RUN_FILE).is_file():
            if not is_finished(run_dir):
                raise ConfigError(
                    f"`{what}` {path}: the run in {run_dir} has not finished; finish it with minitune --resume "
                    f"{run_dir} (or pass a finished run)"
                )
            return


@contextmanager
def owned(out: Path, who: RunIdentity, resume: bool, overwrite: bool) -> Iterator[None]:
    """The folder, locked and claimed for this run for as long as the block runs. Rank 0 does it under torchrun;
    every rank learns whether it worked, so a refusal stops them all (rank 0 prints it)."""
    error = None
    if is_main():
        try:
            acquire_lock(out)
            try:
                claim(out, who, resume, overwrite)
            except BaseException:
                release_lock(out)
                raise
        except ConfigError as e:
            error = e
    if any_rank(error is not None):
        raise error or ConfigError(f"`output_dir` {out}: refused on rank 0")
    try:
        yield
    finally:
        if is_main():
            release_lock(out)


def finished_before(out: Path) -> bool:
    """A folder whose run finished: run.json says so (an earlier minitune's run: its checkpoint said finished and
    its results were written)."""
    out = Path(out)
    if (out / RUN_FILE).is_file():
        return is_finished(out)
    progress = read_progress(out / "checkpoint")
    return bool(progress and progress.get("finished")) and (out / "results.json").is_file()


def finish(out: Path, who: RunIdentity, keep_checkpoints: bool) -> None:
    """The last write of a run: its marker says finished. Then what only a resume needed goes (the best weights'
    copy, and the checkpoints unless they are to be kept): a kill in between leaves a finished run with spare files."""
    mark(out, who, "finished")
    if not keep_checkpoints:
        drop_checkpoints(out)


def drop_checkpoints(run_dir: Path) -> None:
    """A finished run's (or fold's) checkpoints and best-weights copy: model/ holds its best weights."""
    run_dir = Path(run_dir)
    folds = [d for d in sorted(run_dir.glob("fold*")) if d.is_dir() and d.name[4:].isdigit()]
    for d in [run_dir, *folds]:
        ckpt = d / "checkpoint"
        for p in [ckpt, ckpt.with_name("checkpoint.old"), *rotated(ckpt)]:
            shutil.rmtree(p, ignore_errors=True)
        (d / "best.safetensors").unlink(missing_ok=True)
