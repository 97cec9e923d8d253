"""Shared helpers for the benchmarks: timing, peak memory, child processes, machine description, JSON, tables.

How the numbers are taken (the rules every script follows):
- One configuration per fresh child process (`python -m benchmarks.<script> --child spec.json`), so a peak
  memory reading belongs to that configuration alone. Repeats go round-robin over the configurations
  (config A, B, C, then A, B, C again), so a burst of load from other users hits every configuration alike.
- Time: untimed warmup steps first (allocator, optimizer state), then each timed step is clocked with
  perf_counter (after torch.cuda.synchronize on GPU); a child reports the mean step time of its timed steps
  and the parent takes the median over >= 3 repeats. Figures worth comparing are ratios inside one run.
- Memory, CPU: resource.getrusage(RUSAGE_SELF).ru_maxrss of the child (the resident high-water mark, KiB on
  Linux). After setup (model loaded, batches built) the high-water mark is reset by writing 5 to
  /proc/self/clear_refs (Linux >= 4.0), so the reading is the peak *during training*; it still includes
  everything resident then (interpreter, torch, weights, batches). Where the reset is refused, the reading is
  the whole process's peak and `hwm_reset` says so.
- Memory, GPU: torch.cuda.max_memory_allocated (tensors) and max_memory_reserved (the caching allocator's
  segments, what nvidia-smi roughly sees), both reset after setup.

References: torch.utils.benchmark's warmup/median practice; getrusage(2) and proc(5) (clear_refs, VmHWM).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
CHILD_MARK = "BENCH_RESULT "
MINILM = "minilm"

# Random-weight shapes built from a transformers config (tiny: for --quick only).
XLMR_SHAPES: dict[str, dict[str, int]] = {
    name: {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "vocab_size": vocab,
    }
    for name, layers, hidden, heads, inter, vocab in (
        ("xlmr-base", 12, 768, 12, 3072, 250002),
        ("xlmr-large", 24, 1024, 16, 4096, 250002),
        ("xlmr-tiny", 2, 64, 4, 128, 30522),
    )
}
# DeBERTa-v3 shapes (microsoft/deberta-v3-base / -large: vocab 128100, 512 positions, no token types, relative
# attention with 256 log buckets, shared keys, p2c|c2p, layer-normed relative table), random weights.
DEBERTA_SHAPES: dict[str, dict[str, int]] = {
    "deberta-v3-base": XLMR_SHAPES["xlmr-base"] | {"vocab_size": 128100},
    "deberta-v3-large": XLMR_SHAPES["xlmr-large"] | {"vocab_size": 128100},
    "deberta-tiny": XLMR_SHAPES["xlmr-tiny"],
}
DEBERTA_V3 = dict(
    max_position_embeddings=512,
    type_vocab_size=0,
    relative_attention=True,
    pos_att_type="p2c|c2p",
    share_att_key=True,
    norm_rel_ebd="layer_norm",
    position_buckets=256,
    position_biased_input=False,
    layer_norm_eps=1e-7,
    pad_token_id=0,
)


# ----------------------------------------------------------------------------------------------- arguments


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny settings (< 2 minutes) to check the script runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per configuration (default 3, quick 1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per child (default $OMP_NUM_THREADS, else all cores)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/<script>.json; --quick: <script>.quick.json)",
    )
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)


def resolve_common(args: argparse.Namespace, script: str) -> None:
    """Fill the defaults that depend on other flags: repeats, threads, output path, precision."""
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        sys.exit("--repeats must be >= 1")
    if args.threads is None:
        args.threads = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    if args.out is None:
        args.out = RESULTS_DIR / (f"{script}.quick.json" if args.quick else f"{script}.json")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit(f"--device {args.device}: no CUDA device is visible here; use --device cpu")
    if getattr(args, "precision", "absent") is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"


def command_line() -> str:
    return "python -m benchmarks." + Path(sys.argv[0]).stem + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")


# ----------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str, threads: int) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores_visible": len(os.sched_getaffinity(0)),
        "threads_per_child": threads,
        "load_average_at_start": list(os.getloadavg()),
        "memory_total_bytes": _meminfo("MemTotal"),
        "memory_available_at_start_bytes": _meminfo("MemAvailable"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def run_meta(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """What every results JSON records about its run: the command, the machine and the resolved flags."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("child", "out")}
    return {
        "command": command_line(),
        "quick": args.quick,
        **extra,
        "machine": machine_info(args.device, args.threads),
        "settings": settings,
    }


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    """Current resident set size (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak(device: str) -> bool:
    """Start a new peak-memory window; False where the CPU high-water mark cannot be reset."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5 = reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def peak_memory(device: str) -> dict[str, int]:
    """The peak of the current window: CPU ru_maxrss, or GPU allocated and reserved."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        return {
            "peak_mem_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        }
    return {"peak_mem_bytes": maxrss_bytes()}


def current_memory(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.memory_allocated()
    return rss_bytes()


# ----------------------------------------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure_training(
    step: Callable[[Any], int], warmup: Sequence[Any], timed: Sequence[Any], worst: Any | None, device: str
) -> dict[str, Any]:
    """Run `step(batch) -> real tokens` on warmup (untimed), timed and worst batches; times and peak memory.

    Order matters for the CPU reading: the worst batch (the epoch's heaviest, which sets the memory a whole
    epoch needs) runs last, because memory freed after it may stay resident in the allocator and would
    inflate the typical-batch reading taken before it.
    """
    before = current_memory(device)
    hwm_reset = reset_peak(device)
    for batch in warmup:
        step(batch)
    sync(device)
    times, tokens = [], 0
    for batch in timed:
        t0 = time.perf_counter()
        tokens += step(batch)
        sync(device)
        times.append(time.perf_counter() - t0)
    typical = peak_memory(device)
    out: dict[str, Any] = {
        "step_times_s": times,
        "mean_step_s": sum(times) / len(times),
        "timed_tokens": tokens,
        "tokens_per_s": tokens / sum(times),
        "mem_before_train_bytes": before,
        "hwm_reset": hwm_reset,
    }
    out.update({k.replace("peak_", "peak_typical_"): v for k, v in typical.items()})
    if worst is not None:
        step(worst)
    out.update(peak_memory(device))
    return out


def median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def pick_batches(
    batches: Sequence[Sequence[int]], weight: Callable[[Sequence[int]], float], n: int
) -> list[Sequence[int]]:
    """n batches at evenly spaced quantiles of `weight` (e.g. padded slots) over all batches of an epoch.

    A short timed run then sees the epoch's mix of short and long batches instead of whatever a few random
    draws happen to give, so per-token throughput of a few steps stands for the whole epoch.
    """
    ordered = sorted(batches, key=weight)
    n = min(n, len(ordered))
    return [ordered[int((i + 0.5) * len(ordered) / n)] for i in range(n)]


# ----------------------------------------------------------------------------------------------- children


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def run_child(script: str, spec: dict[str, Any], threads: int, workdir: Path, timeout: float = 1800) -> dict[str, Any]:
    """Run `python -m benchmarks.<script> --child spec.json` in a fresh process; its result dict."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=workdir, prefix="spec-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    cmd = [sys.executable, "-m", f"benchmarks.{script}", "--child", name]
    proc = subprocess.run(
        cmd, cwd=REPO, env=child_env(threads), capture_output=True, text=True, timeout=timeout, check=False
    )  # a failing child is reported below with its output
    Path(name).unlink(missing_ok=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK) :])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    raise RuntimeError(f"child {script} {spec.get('name', '')} failed (exit {proc.returncode}):\n{tail}")


def child_main(path: Path, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Entry point inside a child: read the spec, set threads, run, print the result line for the parent."""
    import torch

    spec = json.loads(Path(path).read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(spec.get("seed", 0))
    result = handler(spec)
    print(CHILD_MARK + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- checkpoints


def make_checkpoint(shape: str, out_dir: Path, num_labels: int = 2, seed: int = 0) -> Path:
    """A Hub-layout checkpoint with a sequence-classification head, written by transformers.

    `minilm` is the real all-MiniLM-L6-v2 encoder plus a head initialised by transformers; the xlmr-* shapes
    are random weights of those sizes. Both stacks then load the very same file, head included.
    Call it in a child process (make_checkpoint_in_child): a large model would stay resident in the parent.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    if shape == MINILM:
        from minitune.checkpoints.hub import resolve_model

        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            resolve_model(MINILM), num_labels=num_labels, dtype=torch.float32
        )
    elif shape in DEBERTA_SHAPES:
        config = transformers.DebertaV2Config(**DEBERTA_SHAPES[shape], **DEBERTA_V3, num_labels=num_labels)
        model = transformers.DebertaV2ForSequenceClassification(config).float()
    else:
        config = transformers.XLMRobertaConfig(
            **XLMR_SHAPES[shape],
            max_position_embeddings=514,
            type_vocab_size=1,
            num_labels=num_labels,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        model = transformers.XLMRobertaForSequenceClassification(config).float()
    model.save_pretrained(out_dir)
    # transformers 5 leaves the default two-label id2label out of config.json, and minitune.load_model keeps a
    # checkpoint's head only when id2label is there: write it, so both stacks really load the same head.
    path = Path(out_dir) / "config.json"
    config = json.loads(path.read_text())
    if "id2label" not in config:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        path.write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def make_checkpoint_in_child(shape: str, out_dir: Path, threads: int, workdir: Path) -> Path:
    run_child("common", {"name": f"checkpoint {shape}", "shape": shape, "out_dir": str(out_dir)}, threads, workdir)
    return out_dir


def _checkpoint_child(spec: dict[str, Any]) -> dict[str, Any]:
    make_checkpoint(spec["shape"], Path(spec["out_dir"]))
    return {"out_dir": spec["out_dir"]}


def pad_id_for(checkpoint_dir: Path) -> int:
    config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    return int(config.get("pad_token_id") or 0)


# ----------------------------------------------------------------------------------------------- output


def write_json(path: Path, payload: dict[str, Any], merge: bool = False) -> Path:
    """Write the results; with merge, top-level keys of an existing file that this run did not produce stay."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if merge and path.is_file():
        old = json.loads(path.read_text())
        old_meta = old.get("_meta", {})
        old.update({k: v for k, v in payload.items() if k != "_meta"})
        old["_meta"] = {**old_meta, **payload.get("_meta", {})}
        payload = old
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return format(value, spec)


def table(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    """A Markdown table (readable in a terminal as it is) of the given columns."""
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([r.get(c, "") for c in columns]) for r in rows]
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: builds a checkpoint in a child process")
    parser.add_argument("--child", type=Path, required=True)
    child_main(parser.parse_args().child, _checkpoint_child)
