"""`--report-to mlflow`: a run as an MLflow run, where many teams already look. Its settings are the run's params,
every metrics.jsonl record is logged as metrics at its optimizer step (`<type>/<key>`: train/loss, eval/macro_f1;
the fits of a folds protocol, such as cv's, under their folder's name: fold0/eval/macro_f1; a `--seeds` member is
a run of its own, nested), and results.json, the reports, config.json and figures/ are its artifacts once the run
has written them.

The store is MLflow's own choice (MLFLOW_TRACKING_URI, else its default), or `tracking_uri`: a local SQLite file
(sqlite:///mlflow.db) or a tracking server (http://host:5000). The experiment is MLFLOW_EXPERIMENT_NAME, else
"minitune-<task>". A run started while another is active (a sweep's, or a search's: experiments/) is nested under
it, so each trial is a child run of its sweep. mlflow is optional (`pip install 'minitune[mlflow]'`): a run that
asks for it without it stops before writing anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from minitune.errors import ConfigError

RUN_FILES = ("results.json", "report.txt", "report.html", "config.json")
DIR_TAG = "minitune.output_dir"  # the run's folder, so an inner fit names its metrics relative to it


def tracking(report_to: str | None, tracking_uri: str | None, task: str):
    """The mlflow module with its store and experiment set, when `report_to` is mlflow (else None); opened before
    a run claims its folder, so a store that cannot be used stops the run before it writes anything."""
    if report_to != "mlflow":
        return None
    import mlflow  # only when asked for: it takes seconds to import

    try:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        if mlflow.active_run() is None:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"minitune-{task}")
    except Exception as e:  # a store that cannot be opened: MLflow's own reason, on one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = tracking_uri or mlflow.get_tracking_uri()
        raise ConfigError(f"`tracking_uri` {where}: MLflow cannot use it ({first[:300]})") from None
    return mlflow


class Tracked:
    """The MLflow run of one minitune run (or of a sweep): `log_files(folder)` logs what the run wrote."""

    def __init__(self, mlflow=None):
        self.mlflow = mlflow

    def log_files(self, out: Path, names: tuple[str, ...] = RUN_FILES) -> None:
        if self.mlflow is None:
            return
        for name in names:
            if (out / name).is_file():
                self.mlflow.log_artifact(str(out / name))
        if (out / "figures").is_dir():
            self.mlflow.log_artifacts(str(out / "figures"), artifact_path="figures")


@contextmanager
def tracked(mlflow, out: Path, params: dict, run_id: str | None = None, resume: bool = False) -> Iterator[Tracked]:
    """An MLflow run for the block when `mlflow` is given (`tracking`; else nothing): nested under the active run,
    with `params`. `run_id` continues an existing run (a search's, shared by its workers); `resume` continues the
    last MLflow run of the same folder, if there is one. A block that raises ends the run as failed."""
    if mlflow is None:
        yield Tracked()
        return
    nested = mlflow.active_run() is not None
    tags = {DIR_TAG: str(Path(out).resolve())}
    if resume and run_id is None:
        run_id = _last_run_of(mlflow, tags[DIR_TAG])
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else Path(out).name, nested=nested, tags=tags):
        if params and run_id is None:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
        yield Tracked(mlflow)


def _last_run_of(mlflow, folder: str) -> str | None:
    """The newest run logged from this folder in the current experiment (a resumed run continues it)."""
    found = mlflow.search_runs(
        filter_string=f"tags.`{DIR_TAG}` = '{folder}'", order_by=["attributes.start_time DESC"], output_format="list"
    )
    return found[0].info.run_id if found else None


def _param(value) -> str:
    return str(value)[:6000]  # MLflow's limit on a param's value


class MlflowSink:
    """metrics.jsonl's records as metrics of the active MLflow run; `write(step, scalars)` and `close()`, as MetricsLog
    calls them (train/metrics_log.py). A fit inside a run's folder (a cv fold) prefixes its folder."""

    def __init__(self, out_dir: Path):
        import mlflow

        self.mlflow, self.prefix = mlflow, ""
        run = mlflow.active_run()
        if run is None:  # fit called on its own, outside a run: nothing to log to
            self.mlflow = None
            return
        top = mlflow.get_run(run.info.run_id).data.tags.get(DIR_TAG)
        here = Path(out_dir).resolve()
        if top and here != Path(top) and here.is_relative_to(top):
            self.prefix = here.relative_to(top).as_posix() + "/"

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.mlflow is not None and scalars:
            self.mlflow.log_metrics({self.prefix + name: float(v) for name, v in scalars.items()}, step=step)

    def close(self) -> None:
        pass
