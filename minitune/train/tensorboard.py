"""`--report-to tensorboard`: every metrics.jsonl record also written as TensorBoard scalars under the output
directory (tensorboard/), so a run can be watched live with `tensorboard --logdir OUTPUT_DIR`.

Scalars are named `<type>/<key>` (train/loss, train/lr, train/grad_norm, eval/macro_f1, ...) at the record's
optimizer step; every numeric field of the record is written, so TensorBoard shows the same numbers as metrics.jsonl.
tensorboard is optional: `check_available` fails with the install line before a run writes anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from minitune.errors import ConfigError

INSTALL = "pip install tensorboard==2.21.0"
NOT_SCALARS = ("type", "step")


def check_available(report_to: str | None) -> None:
    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"`report_to` tensorboard needs the tensorboard package: {INSTALL}, or drop it")


class TensorBoardSink:
    """Writes metrics records as scalars; `write(record)` and `close()`, as MetricsLog calls them."""

    def __init__(self, log_dir: Path, resume_step: int | None = None):
        """On resume, TensorBoard drops the earlier events past the checkpoint's step (`purge_step`), as
        metrics.jsonl is cut back: those steps are trained again."""
        check_available("tensorboard")
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked for

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def write(self, record: dict) -> None:
        kind, step = record.get("type", "log"), int(record.get("step", 0))
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
