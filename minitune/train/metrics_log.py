"""metrics.jsonl, the run's log: one JSON object per line (type "train" or "eval"), flushed as written, cut back to
the checkpoint's step on resume so no step is logged twice; and the peak memory each train row records."""

from __future__ import annotations

import importlib.util
import json
import resource
from pathlib import Path

import torch

from minitune.checkpoints.atomic import atomic_write_text
from minitune.errors import ConfigError
from minitune.train.mlflow_tracking import MlflowSink
from minitune.train.tensorboard import TensorBoardSink


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _logged_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except ValueError:  # a line cut short by a crash: drop it
        return float("inf")


class MetricsLog:
    """metrics.jsonl: one JSON object per line, flushed so a crash loses nothing already logged."""

    def __init__(self, path: Path, resume_step: int | None = None, sink=None):
        """A fresh log, or on resume the old one cut back to the checkpoint's step: the steps logged after it
        are about to be trained again, and would otherwise appear twice. `sink` (write(step, scalars), close())
        receives every record's numbers too (train/tensorboard.py, train/mlflow_tracking.py)."""
        if resume_step is not None and path.exists():
            kept = [
                line
                for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if _logged_step(line) <= resume_step
            ]
            atomic_write_text(path, "".join(kept))
        self.file = open(path, "a" if resume_step is not None else "w", encoding="utf-8")  # noqa: SIM115 (held for the run)
        self.sink = sink

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.sink is not None:
            self.sink.write(int(record.get("step", 0)), scalars(record))

    def close(self) -> None:
        self.file.close()
        if self.sink is not None:
            self.sink.close()


# report_to -> the package its sink needs, and how to install it
SINK_PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard==2.21.0"),
    "mlflow": ("mlflow", "pip install 'minitune[mlflow]'"),
}


def check_report_to(report_to: str | None, tracking_uri: str | None = None) -> None:
    """`report_to`'s package is installed (checked before a run writes anything); `tracking_uri` is MLflow's."""
    if report_to in SINK_PACKAGES and importlib.util.find_spec(SINK_PACKAGES[report_to][0]) is None:
        package, install = SINK_PACKAGES[report_to]
        raise ConfigError(f"`report_to` {report_to} needs the {package} package: {install}, or drop it")
    if tracking_uri is not None and report_to != "mlflow":
        raise ConfigError("`tracking_uri` is where MLflow logs: it needs report_to mlflow")


def scalars(record: dict) -> dict[str, float]:
    """A record's numbers as the sinks name them: `<type>/<key>` (train/loss, eval/macro_f1), the step aside."""
    kind = record.get("type", "log")
    return {
        f"{kind}/{k}": v
        for k, v in record.items()
        if k not in ("type", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def metrics_log(out_dir: Path, resume_step: int | None, report_to: str | None) -> MetricsLog:
    """OUT/metrics.jsonl, its records also sent where `report_to` says: TensorBoard events in OUT/tensorboard, or
    the active MLflow run's metrics."""
    sink = None
    if report_to == "tensorboard":
        sink = TensorBoardSink(out_dir / "tensorboard", resume_step)
    elif report_to == "mlflow":
        sink = MlflowSink(out_dir)
    return MetricsLog(out_dir / "metrics.jsonl", resume_step, sink)
