"""--report-to tensorboard: the events hold the same scalars, at the same steps, as metrics.jsonl."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minitune.cli import main
from minitune.train.metrics_log import check_report_to


def test_events_equal_metrics_jsonl(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,label\n" + "great film,pos\nawful film,neg\nsuperb acting,pos\nboring plot,neg\n" * 6)
    out = tmp_path / "run"
    args = ["--task", "custom", "--train-file", str(f), "--dev-file", str(f), "--model", "ffnn", "--epochs", "2"]
    assert (
        main([*args, "--batch-size", "4", "--log-every", "2", "--output-dir", str(out), "--report-to", "tensorboard"])
        == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for key, value in r.items():
            if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(f"{r['type']}/{key}", []).append((r["step"], value))
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/macro_f1"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        # TensorBoard stores float32: compare at its precision.
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag
    # each epoch's evaluation; none before training, where the fresh head would score chance
    assert len(expected["train/loss"]) == 6 and [s for s, _ in expected["eval/macro_f1"]] == [6, 12]


def test_missing_tensorboard_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "tensorboard" else object())
    with pytest.raises(Exception, match="pip install tensorboard==2.21.0"):
        check_report_to("tensorboard")
    check_report_to(None)  # not asked for: never looked up
    assert main(["--task", "humor", "--report-to", "tensorboard", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "error: --report-to tensorboard needs the tensorboard package: pip install tensorboard==2.21.0, or drop it"
    )
    assert not (tmp_path / "o").exists()


def test_resume_drops_the_events_past_the_checkpoint(tmp_path):
    """As metrics.jsonl is cut back on --resume, the steps after the checkpoint are not shown twice."""
    from minitune.train.tensorboard import TensorBoardSink

    first = TensorBoardSink(tmp_path)
    for step in range(1, 7):
        first.write(step, {"train/loss": float(step)})
    first.close()
    resumed = TensorBoardSink(tmp_path, resume_step=3)
    for step in range(4, 7):
        resumed.write(step, {"train/loss": 10.0 * step})
    resumed.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
        (5, 50.0),
        (6, 60.0),
    ]
