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

import fcntl
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
from minitune.checkpoints.rundir import read_json, worth_keeping
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


def acquire_lock(out: Path) -> int:
    """Lock the folder (creating it) for this process, or stop in one line naming the process that holds it.
    The lock is the kernel's (flock on .lock), held by an open file: two processes can never both take it, and a
    process that dies, however it dies, lets it go. Returns the descriptor that holds it (for `release_lock`)."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"`output_dir` {out} is a link to {os.readlink(out)}, which does not exist: create that "
                          "folder, or choose another `output_dir`")  # fmt: skip
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), out)
        where = "" if blocker == out else f": {blocker}"
        raise ConfigError(f"`output_dir` {out}{where} is a file: choose a folder") from None
    except OSError as e:
        raise ConfigError(f"`output_dir` {out}: cannot make it ({e.strerror}); choose a writable folder") from None
    lock = out / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"`output_dir` {out} is in use by {_holder(lock)}: wait for it to end, or choose another "
                              "`output_dir`") from None  # fmt: skip
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed this file as it let go: lock the one there now
            break
        os.close(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(me).encode())
    return fd


def _holder(lock: Path) -> str:
    """Who holds the lock, in words (its file may not be written yet by a process that has just taken it)."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        pid, host, since = holder["pid"], holder["host"], holder["started"]
    except (OSError, ValueError, TypeError, KeyError):
        return "another minitune run"
    return f"another minitune run (PID {pid} on {host}, since {since})"


def release_lock(out: Path, fd: int) -> None:
    """Let the folder go: the lock file is removed while still held, so no one locks a file about to vanish."""
    try:
        (Path(out) / LOCK_FILE).unlink(missing_ok=True)
    finally:
        os.close(fd)


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """The folder locked for as long as the block runs (a command that rewrites files in a finished run)."""
    fd = acquire_lock(out)
    try:
        yield
    finally:
        release_lock(out, fd)


def debris(out: Path) -> list[Path]:
    """What atomic writes a killed process was in the middle of left behind: hidden `.NAME.XXXX.tmp` files and
    folders (and a model folder's `.old` copy) anywhere in the run folder."""
    return [p for p in Path(out).rglob(".*") if is_debris(p)]


def is_debris(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith((".tmp", ".old"))


def clear_debris(out: Path) -> None:
    for p in debris(out):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def clear_folder(out: Path, keep: tuple[str, ...] = (RUN_FILE, LOCK_FILE)) -> None:
    """Remove everything in `out` but `keep` (a link is removed, never what it points to)."""
    for p in Path(out).iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def claim(out: Path, who: RunIdentity, resume: bool, overwrite: bool) -> None:
    """Make `out` this run's folder (its lock already held): check what it holds, clear it for `overwrite`, and
    mark it as this run's, unfinished. `resume`: the folder must hold an unfinished (or finished) run of the same
    command, task and model; what a killed write left half-done there goes."""
    out = Path(out)
    held = describe_folder(out)
    if resume:
        _check_resumed(out, who, held)
        clear_debris(out)
        return
    if held == "files that are not a minitune run":
        raise ConfigError(
            f"`output_dir` {out} holds files that are not a minitune run"
            + ("; `overwrite` clears run folders only" if overwrite else "")
            + ": choose another `output_dir` (or an empty or new one)"
        )
    if held is not None and not overwrite and not nothing_to_lose(out):
        if held.startswith("a finished"):
            raise ConfigError(
                f"`output_dir` {out} holds {held}: start over there with `overwrite`, or choose another `output_dir` "
                f"(`resume` {out} prints its report)"
            )
        raise ConfigError(
            f"`output_dir` {out} holds {held}: continue it with `resume` {out}, start over there with `overwrite`, "
            "or choose another `output_dir`"
        )
    mark(out, who, "running")  # first: from here on the folder is this run's, unfinished
    clear_folder(out)


def nothing_to_lose(out: Path) -> bool:
    """An unfinished run stopped before it wrote anything worth keeping (checkpoints/rundir.py `worth_keeping`): a
    new run may take its folder, and a run that made the folder removes it when stopped."""
    run = read_run(out)
    return run is not None and run.get("status") != "finished" and not worth_keeping(out)


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


def require_finished(path: Path, what: str | None = "model") -> None:
    """A run folder (or a model folder inside one) that a command reads must be finished: an unfinished run's files
    may be from the middle of its finishing writes. Folders without run.json (earlier runs, plain checkpoints)
    pass. `what`: the setting that named the folder (None: a command's positional argument)."""
    path = Path(path)
    for run_dir in (path, path.parent, path.parent.parent):
        if (run_dir / RUN_FILE).is_file():
            if not is_finished(run_dir):
                run = read_run(run_dir) or {}
                command = "" if run.get("command", "train") == "train" else f"{run['command']} "
                raise ConfigError(
                    f"{f'`{what}` ' if what else ''}{path}: the run in {run_dir} has not finished; finish it with "
                    f"minitune {command}--resume {run_dir} (or pass a finished run)"
                )
            return


@contextmanager
def owned(out: Path, who: RunIdentity, resume: bool, overwrite: bool) -> Iterator[None]:
    """The folder, locked and claimed for this run for as long as the block runs. Rank 0 does it under torchrun;
    every rank learns whether it worked, so a refusal stops them all (rank 0 prints it)."""
    error = None
    if is_main():
        try:
            fd = acquire_lock(out)
            try:
                claim(out, who, resume, overwrite)
            except BaseException:
                release_lock(out, fd)
                raise
        except ConfigError as e:
            error = e
    if any_rank(error is not None):
        raise error or ConfigError(f"`output_dir` {out}: refused on rank 0")
    try:
        yield
    finally:
        if is_main():
            release_lock(out, fd)


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
    clear_debris(out)
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
