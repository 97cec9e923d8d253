"""torch.distributed on CPU: two gloo processes (tests/dist_worker.py) against one, sharded batching, resume, failure.

The multi-process tests start real processes (about 5 s each on 2 cores), so they are in the slow tier; the
batching arithmetic they rely on is checked in-process in the fast tier.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from dist_worker import sampler  # the samplers the workers train with (tests/ is on sys.path under pytest)
from minitune.errors import CheckpointError, ConfigError
from minitune.train import distributed
from minitune.train.distributed import ShardedSampler, shard_of

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "dist_worker.py"
SAMPLERS = ("random", "bucketed", "token-budget")


# ----------------------------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("kind", SAMPLERS)
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_single_process_batches_and_see_every_example_once(kind, world):
    lengths = [3 + (7 * i) % 40 for i in range(47)]
    single = sampler(kind, lengths)
    ranks = [ShardedSampler(sampler(kind, lengths), r, world) for r in range(world)]
    for epoch in range(2):
        single.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        global_batches = list(single)
        shards = [list(s) for s in ranks]
        assert all(len(s) == len(global_batches) for s in shards)  # same steps on every rank: no hang at the end
        seen = []
        for i, batch in enumerate(global_batches):
            real = [shards[r][i] for r in range(world) if not shards[r][i].empty]
            assert sum(real, []) == batch  # the global batch, in order, cut into contiguous shards
            assert all(shards[r][i].global_size == len(batch) for r in range(world))
            seen += batch
        assert sorted(seen) == list(range(len(lengths)))  # every example once per epoch, none dropped


def test_a_batch_smaller_than_the_world_gives_weight_zero_stand_ins(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shards = [shard_of([7, 8], r, 3) for r in range(3)]
    assert [list(s) for s in shards] == [[7], [8], [7]] and [s.empty for s in shards] == [False, False, True]
    # rank 0's window: its shards of a batch of 6 and of the batch of 2; DDP averages over 3 ranks, so the weights
    # are 3 x n_micro / 8 and sum over all ranks to 3 (x 1/3 = the mean over the 8 examples)
    window = [shard_of(list(range(6)), 0, 3), shards[0]]
    assert distributed.window_shares(window) == [3 * 2 / 8, 3 * 1 / 8]
    assert distributed.window_shares([shard_of(list(range(6)), 2, 3), shards[2]]) == [3 * 2 / 8, 0.0]


def test_launch_mistakes_are_found_before_the_group_starts(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="fsdp full shards the model across processes: start the run with torchrun"):
        distributed.check_launch("full", False, torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.check_launch("full", False, torch.device("cpu"))
    with pytest.raises(ConfigError, match="fsdp_cpu_offload .* needs device cuda"):
        distributed.check_launch("full", True, torch.device("cpu"))


def test_resume_with_another_world_size_is_refused(tmp_path, monkeypatch):
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "signature.json").write_text(json.dumps({"world_size": 2}))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\), this run has 1.*--nproc-per-node 2"):
        distributed.check_world_size(ckpt / "signature.json")
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.check_world_size(ckpt / "signature.json")
    assert distributed.world_signature({"lr": 1.0}) == {"lr": 1.0, "world_size": 2}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.world_signature({"lr": 1.0}) == {"lr": 1.0}  # single-process checkpoints stay as they were


# ----------------------------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(3)
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,  # dropout streams differ per rank; without dropout the runs must agree
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    path = tmp_path_factory.mktemp("tiny")
    transformers.BertForSequenceClassification(cfg).save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: dict, world: int) -> list[subprocess.Popen]:
    """`world` worker processes (world 1: no torch.distributed environment at all)."""
    port, procs = free_port(), []
    for r in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k, None)
        if world > 1:
            env |= dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
            env["MASTER_PORT"] = str(port)
        cmd = [sys.executable, str(WORKER), json.dumps(args)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def run(args: dict, world: int, expect_ok: bool = True) -> None:
    procs = start(args, world)
    outputs = [p.communicate(timeout=240)[0].decode() for p in procs]
    if expect_ok:
        for p, out in zip(procs, outputs):
            assert p.returncode == 0, out[-3000:]
    else:
        assert all(p.returncode != 0 for p in procs)


def weights(out: Path, rank: int = 0) -> dict:
    return load_file(str(out / f"final{rank}.safetensors"))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-6, msg=k)


CASES = [
    ("random", {}),
    ("bucketed", {}),
    ("token-budget", {}),
    ("bucketed", {"fsdp": "full"}),
    ("token-budget", {"fsdp": "grad-op"}),
    ("bucketed", {"fsdp": "full", "lora": True, "grad_checkpointing": True}),
    # per-example perturbations do not depend on how a batch is split: DDP with FGM / PGD ends where one process ends
    ("random", {"adversarial": "fgm", "lora": True}),
    ("token-budget", {"adversarial": "pgd"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,options", CASES, ids=lambda c: c if isinstance(c, str) else "-".join(map(str, c.values()))
)
def test_two_processes_train_the_weights_of_one(tmp_path, tiny_model, kind, options):
    """DDP (or FSDP2 on gloo) with the global batch split over 2 ranks and accumulation over 2 micro-batches (uneven
    windows, and for token budgets batches of one example, so weight-0 stand-ins) ends where one process ends."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    single = {k: v for k, v in options.items() if k != "fsdp"}
    procs = start(dict(model=str(tiny_model), out=str(one), sampler=kind, **single), 1)
    run(dict(model=str(tiny_model), out=str(two), sampler=kind, **options), 2)
    assert procs[0].wait(timeout=240) == 0, procs[0].stdout.read().decode()[-3000:]
    if "fsdp" not in options:
        assert_same(weights(two, 0), weights(two, 1))  # the replicas agree
    assert_same(weights(one), weights(two))
    start_w = load_file(str(tiny_model / "model.safetensors"))
    trained = weights(one)
    moved = [trained[k] - start_w[k] for k in trained if k in start_w] or [trained[k] for k in trained if "lora_B" in k]
    assert max(float(m.abs().max()) for m in moved) > 1e-3  # the runs trained (not two untouched models compared)
    logged = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [r["step"] for r in single]  # global steps, same schedule
    for a, b in zip(logged, single):
        if a["type"] == "train":
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)  # the global window's loss
            assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
            assert ("adv_loss" in a) == ("adv_loss" in b) == bool(options.get("adversarial"))
            if "adv_loss" in a:
                assert a["adv_loss"] == pytest.approx(b["adv_loss"], rel=1e-5)  # the global window's too
        else:
            assert a["score"] == pytest.approx(b["score"], rel=1e-5)  # gathered evaluation


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [None, "full"])
def test_two_process_resume_equals_the_uninterrupted_run(tmp_path, tiny_model, fsdp):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    args = dict(model=str(tiny_model), sampler="bucketed", epochs=3, eval_every=2, fsdp=fsdp)
    procs = start(args | dict(out=str(straight)), 2)
    run(
        args | dict(out=str(resumed), crash_at_eval=4), 2, expect_ok=False
    )  # dies after the step-4 checkpoint (eval 1 is step 0)
    for p in procs:
        assert p.wait(timeout=240) == 0, p.stdout.read().decode()[-3000:]
    state = torch.load(resumed / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["loop"]["step"] == 4 and len(state["rank_rngs"]) == 2  # each rank's RNG is kept
    assert (resumed / "checkpoint" / "shards").is_dir() == bool(fsdp)  # FSDP: torch.distributed.checkpoint shards
    run(args | dict(out=str(resumed), resume=True), 2)
    assert_same(weights(straight), weights(resumed))
    logs = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, resumed)]
    assert [(r["type"], r["step"]) for r in logs[0]] == [(r["type"], r["step"]) for r in logs[1]]
    for a, b in zip(*logs):
        assert a.get("loss", a.get("score")) == pytest.approx(b.get("loss", b.get("score")), rel=1e-5)


def start_long_run(out: Path, model: Path, timeout: int) -> list[subprocess.Popen]:
    """Two ranks on a practically endless run, returned once both have trained and evaluated a step."""
    args = dict(model=str(model), out=str(out), sampler="random", epochs=1000, eval_every=1, n=200)
    procs = start(args | dict(progress=True, timeout=timeout), 2)
    deadline = time.monotonic() + 120
    while not (out / "progress1").exists():
        assert time.monotonic() < deadline and procs[0].poll() is None, "the run never got going"
        time.sleep(0.2)
    return procs


@pytest.mark.slow
def test_a_killed_rank_ends_the_other_within_the_timeout(tmp_path, tiny_model):
    procs = start_long_run(tmp_path, tiny_model, timeout=20)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    rc = procs[0].wait(timeout=60)
    assert rc != 0 and time.monotonic() - t0 < 25  # gloo notices the closed connection, or the 20 s timeout fires


def start_cli(argv: list[str], world: int) -> list[subprocess.Popen]:
    port, procs = free_port(), []
    for r in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RANK": str(r), "LOCAL_RANK": str(r)}
        env |= dict(WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        # fp32 as set, not auto: the ranks are compared with each other and with FSDP, on any machine
        cmd = [sys.executable, str(REPO / "run.py"), *argv, "--precision", "fp32"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


@pytest.mark.slow
def test_a_user_error_ends_every_rank_and_is_printed_once(tmp_path, data_dir):
    argv = [
        "--task",
        "humor",
        "--model",
        "no-such-model",
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(tmp_path / "o"),
    ]
    procs = start_cli(argv, 2)
    errs = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    assert errs[0].count("error:") == 1 and "no-such-model" in errs[0] and "Traceback" not in errs[0]
    assert "error:" not in errs[1]  # the other rank found it too, silently
    assert not (tmp_path / "o").exists()  # found before anything was written


@pytest.mark.slow
def test_cli_under_two_processes_writes_once_and_records_the_world_size(tmp_path, data_dir):
    out = tmp_path / "run"
    argv = ["--task", "humor", "--model", "ffnn", "--data-dir", str(data_dir), "--output-dir", str(out)]
    argv += ["--max-train-samples", "48", "--max-eval-samples", "24", "--epochs", "1", "--device", "cpu"]
    procs = start_cli([*argv, "--keep-checkpoints", "1"], 2)
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1].decode()[-3000:] + outs[1][1].decode()[-3000:]
    assert "headline:" in outs[0][0].decode() and "headline:" not in outs[1][0].decode()  # rank 0 reports
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    # FSDP2 (full sharding) consolidates model/ on rank 0: the DDP run's weights (same seeds, same dropout streams)
    sharded = tmp_path / "fsdp"
    procs = start_cli([*argv[:-9], str(sharded), *argv[-8:], "--fsdp", "full"], 2)
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1].decode()[-3000:]
    assert_same(
        load_file(str(out / "model" / "model.safetensors")), load_file(str(sharded / "model/model.safetensors"))
    )
    # resuming an unfinished run (killed while finishing) on one process is refused with the world size named
    run_file = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(run_file | {"status": "running"}))
    one = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *argv, "--resume", str(out)],
        env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")} | {"HF_HUB_OFFLINE": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 2 and "written by 2 process(es), this run has 1" in one.stderr, one.stderr[-2000:]


@pytest.mark.slow
def test_a_stop_request_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, tiny_model):
    """SIGTERM (or Ctrl-C) reaching one rank: all ranks agree to stop after the same step, rank 0 checkpoints it."""
    procs = start_long_run(tmp_path, tiny_model, timeout=60)
    procs[0].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert all("TrainingInterrupted: interrupted after step" in out for out in outs), outs[1][-2000:]
    steps = [int(out.split("interrupted after step ")[1].split()[0]) for out in outs]
    progress = json.loads((tmp_path / "checkpoint" / "progress.json").read_text())
    assert steps[0] == steps[1] == progress["step"] > 0
