"""`--report-to tensorboard`: every metrics.jsonl record also written as TensorBoard scalars under the output
directory (tensorboard/), so a run can be watched live with `tensorboard --logdir OUTPUT_DIR`.

Scalars are named `<type>/<key>` (train/loss, train/lr, train/grad_norm, eval/macro_f1, ...) at the record's
optimizer step; every numeric field of the record is written, so TensorBoard shows the same numbers as metrics.jsonl.
tensorboard is optional: train/metrics_log.check_report_to fails with the install line before a run writes anything.
"""

from __future__ import annotations

from pathlib import Path


class TensorBoardSink:
    """Writes metrics records as scalars; `write(step, scalars)` and `close()`, as MetricsLog calls them."""

    def __init__(self, log_dir: Path, resume_step: int | None = None):
        """On resume, TensorBoard drops the earlier events past the checkpoint's step (`purge_step`), as
        metrics.jsonl is cut back: those steps are trained again."""
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked for

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
