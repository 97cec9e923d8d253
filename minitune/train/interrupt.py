"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM asks the loop to stop; it finishes the optimizer step under
way, writes a checkpoint and raises TrainingInterrupted, so `--resume` continues exactly where it stopped.

A second Ctrl-C stops at once (KeyboardInterrupt), keeping the last checkpoint written before. Handlers are only
installed in the main thread (signals cannot be caught elsewhere) and the previous ones are restored on exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from tqdm.auto import tqdm


class TrainingInterrupted(Exception):  # noqa: N818 (a request from the user, not an error)
    """The loop stopped on request after `step` optimizer steps; `checkpoint` is the directory written, or None."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"interrupted after step {step}")


class StopRequest:
    """A context manager: inside it, SIGINT and SIGTERM set `requested` instead of killing the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = signum
        tqdm.write(
            f"{signal.Signals(signum).name}: stopping after this step to write a checkpoint "
            "(press Ctrl-C again to stop at once)"
        )
