"""`precision` auto: bf16 where the hardware computes bf16 natively, fp32 elsewhere; the choice and its reason are
printed and saved, dev scoring and predict run in the run's precision. Machines with and without native bf16 are
simulated through the CPU flags the detection reads (and CUDA's compute capability)."""

import importlib
import json

import numpy as np
import pytest
import torch

from minitune.cli import main
from minitune.train.amp import autocast_context, choose_precision, native_bf16

amp = importlib.import_module("minitune.train.amp")
READ_CPU_FLAGS = amp.cpu_flags  # taken at import, before conftest's fixture stands in a CPU without native bf16
SMALL = ["--max-train-samples", "32", "--max-eval-samples", "16", "--epochs", "1", "--max-length", "24"]
WITH_BF16 = frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"})
WITHOUT_BF16 = frozenset({"fpu", "avx2", "avx512f", "avx512_vnni"})


def test_cpu_choice_follows_the_bf16_flags():
    assert choose_precision("auto", "cpu", WITH_BF16) == ("bf16", "auto: this CPU computes bf16 natively (avx512_bf16)")
    assert choose_precision("auto", "cpu", frozenset({"amx_bf16", "amx_tile"}))[0] == "bf16"
    precision, why = choose_precision("auto", "cpu", WITHOUT_BF16)
    assert precision == "fp32" and "no native bf16" in why
    assert choose_precision("auto", "cpu", frozenset())[0] == "fp32"  # no /proc/cpuinfo (macOS): fp32
    # A precision that was set is kept, whatever the machine.
    assert choose_precision("fp32", "cpu", WITH_BF16) == ("fp32", "set by `precision`")
    assert choose_precision("bf16", "cpu", WITHOUT_BF16) == ("bf16", "set by `precision`")


def test_cpu_flags_are_read_from_proc_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\nbogomips\t: 1\n")
    assert READ_CPU_FLAGS(str(cpuinfo)) == frozenset({"fpu", "sse2", "avx512f", "avx512_bf16"})
    assert native_bf16("cpu", READ_CPU_FLAGS(str(cpuinfo)))[0] is True
    assert READ_CPU_FLAGS(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize(("capability", "native"), [((8, 0), True), ((9, 0), True), ((7, 5), False)])
def test_cuda_choice_follows_the_compute_capability(monkeypatch, capability, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some GPU")
    ok, why = native_bf16("cuda")
    assert ok is native and f"compute capability {capability[0]}.{capability[1]}" in why
    assert choose_precision("auto", "cuda")[0] == ("bf16" if native else "fp32")


def test_auto_outside_a_run_resolves_on_the_spot(monkeypatch):
    """fit() or scoring called from Python with the default settings: auto becomes the machine's choice."""
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with autocast_context("auto", "cpu"):
        assert (x @ w).dtype == torch.float32  # conftest: no native bf16
    monkeypatch.setattr(amp, "cpu_flags", lambda: WITH_BF16)
    with autocast_context("auto", "cpu"):
        assert (x @ w).dtype == torch.bfloat16


def _run(tmp_path, data_dir, name, *extra):
    out = tmp_path / name
    args = ["--task", "humor", "--model", "minilm", "--data-dir", str(data_dir), "--output-dir", str(out), *SMALL]
    assert main([*args, *extra]) == 0
    return out, json.loads((out / "results.json").read_text())


def _autocast_dtypes(monkeypatch):
    """Record the autocast dtype (or fp32) of every forward pass of dev scoring."""
    import minitune.eval.scoring as scoring

    seen = []
    real = scoring.autocast_context

    def spy(precision, device):
        seen.append(precision)
        return real(precision, device)

    monkeypatch.setattr(scoring, "autocast_context", spy)
    return seen


def test_a_run_on_a_bf16_machine_trains_scores_and_predicts_in_bf16(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setattr(amp, "cpu_flags", lambda: WITH_BF16)
    seen = _autocast_dtypes(monkeypatch)
    out, res = _run(tmp_path, data_dir, "bf16")
    assert res["config"]["precision"] == "bf16"
    assert res["precision"] == {"used": "bf16", "reason": "auto: this CPU computes bf16 natively (avx512_bf16)"}
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"  # saved as chosen
    assert "precision: bf16 (auto: this CPU computes bf16 natively (avx512_bf16))" in capsys.readouterr().out
    assert seen and set(seen) == {"bf16"}  # dev scored as it trained
    # predict scores in the run's precision, unless told otherwise
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nwhy did the chicken cross the road\nthe meeting is at noon\n")
    seen.clear()
    assert main(["predict", "--model", str(out), "--input", str(texts), "--output", str(tmp_path / "p.csv")]) == 0
    assert set(seen) == {"bf16"}
    seen.clear()
    args = ["--model", str(out), "--input", str(texts), "--output", str(tmp_path / "q.csv"), "--precision", "fp32"]
    assert main(["predict", *args]) == 0
    assert set(seen) == {"fp32"}
    # on a machine without native bf16 the bf16 run predicts in fp32 (emulated bf16 would only be slower)
    monkeypatch.setattr(amp, "cpu_flags", lambda: WITHOUT_BF16)
    seen.clear()
    assert main(["predict", "--model", str(out), "--input", str(texts), "--output", str(tmp_path / "r.csv")]) == 0
    assert set(seen) == {"fp32"}
    a = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1, usecols=(-2, -1))
    b = np.loadtxt(tmp_path / "q.csv", delimiter=",", skiprows=1, usecols=(-2, -1))
    assert np.abs(a - b).max() < 0.05 and not np.array_equal(a, b)  # bf16 rounding, not another model


def test_a_resumed_auto_run_keeps_the_precision_it_began_with(tmp_path, data_dir, monkeypatch, capsys):
    from conftest import interrupt_fit

    monkeypatch.setattr(amp, "cpu_flags", lambda: WITH_BF16)
    out = tmp_path / "stopped"
    args = ["--task", "humor", "--model", "ffnn", "--data-dir", str(data_dir), "--output-dir", str(out), *SMALL]
    interrupt_fit(monkeypatch, 1, lambda out_dir, resume: not resume)
    assert main([*args, "--batch-size", "8"]) == 130
    monkeypatch.setattr(amp, "cpu_flags", lambda: WITHOUT_BF16)  # another machine now would choose fp32
    capsys.readouterr()
    assert main([*args, "--batch-size", "8", "--resume", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["precision"] == "bf16" and res["precision"]["reason"].startswith("as the resumed run began")
    assert "precision: bf16 (as the resumed run began" in capsys.readouterr().out


def test_the_generative_head_stays_fp32_under_auto(monkeypatch):
    from minitune.config.load import make_config
    from minitune.inputs import run_precision

    monkeypatch.setattr(amp, "cpu_flags", lambda: WITH_BF16)
    cfg = make_config(task="humor", model="smollm2", head="generative")
    assert run_precision(cfg) == ("fp32", "auto: the generative head generates and scores its answers in fp32")
    assert run_precision(make_config(task="humor", model="minilm"))[0] == "bf16"


def test_a_run_without_native_bf16_stays_fp32(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(amp, "cpu_flags", lambda: WITHOUT_BF16)
    seen = _autocast_dtypes(monkeypatch)
    out, res = _run(tmp_path, data_dir, "fp32", "--epochs", "2")
    assert res["config"]["precision"] == "fp32" and res["precision"]["reason"].startswith("auto: this CPU has no")
    assert set(seen) == {"fp32"}
    assert json.loads((out / "config.json").read_text())["precision"] == "fp32"
