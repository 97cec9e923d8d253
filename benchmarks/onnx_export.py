"""CPU predict throughput: onnxruntime on the `minitune export` file against minitune's own predict, same texts.

    OMP_NUM_THREADS=1 python -m benchmarks.onnx_export [--n 1000] [--batch-size 64] [--rounds 3]

The model is all-MiniLM-L6-v2 (`minilm`) with a fresh 2-label head, saved as a training run saves model/ and
exported with `minitune export`; the texts are the first N of the humor dev set. Both sides get the same
tokenized features in the same length-sorted batches of `--batch-size`: minitune through `predict_scores` (what
`minitune predict` runs: unpadded per-token layers on CPU), onnxruntime through the exported graph on the batch
padded to its longest text. One thread each (torch and onnxruntime's intra-op pool). One untimed pass each, then
`--rounds` timed passes, alternating which goes first; the figure to quote is the median of the per-round ratios.
Also records the largest probability difference. Writes benchmarks/results/onnx_export.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minitune
from benchmarks import common
from minitune.data.batching import length_of, make_collate
from minitune.data.features import tokenize
from minitune.data.kinds import SINGLE_LABEL
from minitune.data.tasks import load_task, resolve_data_dir
from minitune.eval.scoring import predict_scores
from minitune.export import export_onnx


def ort_scores(session, features, collate, batch_size: int, names: list[str]) -> np.ndarray:
    order = sorted(range(len(features)), key=lambda i: length_of(features[i]))
    out = np.zeros((len(features), 2), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([features[i] for i in idx])
        out[idx] = session.run(["probs"], {n: batch[n].numpy() for n in names})[0]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="texts (humor dev)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "onnx_export.json")
    args = p.parse_args(argv)
    import onnxruntime as ort

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="onnx_bench_"))
    model = minitune.load_model("minilm", num_labels=2)
    minitune.save_pretrained(model, work / "model", label_names=["not_humor", "humor"])
    minitune.load_tokenizer("minilm").save_pretrained(work / "model")
    t0 = time.perf_counter()
    export_onnx(work / "model", work / "model.onnx")
    export_s = time.perf_counter() - t0

    ours = minitune.load_model(work / "model").eval()
    tok = minitune.load_tokenizer(work / "model")
    texts = load_task("humor", resolve_data_dir(args.data_dir)).dev[: args.n]
    features = tokenize(texts, tok, SINGLE_LABEL, args.max_length)
    collate = make_collate("dynamic", args.max_length, tok.pad_token_id)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(work / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    device = torch.device("cpu")
    runners = {
        "minitune": lambda: predict_scores(ours, features, collate, SINGLE_LABEL, args.batch_size, device),
        "onnxruntime": lambda: ort_scores(session, features, collate, args.batch_size, names),
    }
    probs = {name: run() for name, run in runners.items()}  # untimed pass; also the agreement check
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        for name in list(runners)[:: 1 if r % 2 == 0 else -1]:
            t = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t)
    ratios = [m / o for m, o in zip(times["minitune"], times["onnxruntime"])]
    result = {
        "texts": len(features),
        "real_tokens": int(sum(length_of(f) for f in features)),
        "batch_size": args.batch_size,
        "export_seconds": round(export_s, 2),
        "seconds": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
        "texts_per_s": {k: round(len(features) / statistics.median(vs), 1) for k, vs in times.items()},
        "onnxruntime_speedup_median": round(statistics.median(ratios), 3),
        "onnxruntime_speedup_rounds": [round(x, 3) for x in ratios],
        "max_abs_prob_diff": float(np.abs(probs["minitune"] - probs["onnxruntime"]).max()),
        "onnx_file_bytes": (work / "model.onnx").stat().st_size,
    }
    meta = {
        "command": common.command_line(),
        "machine": common.machine_info("cpu", 1) | {"onnxruntime": ort.__version__},
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    common.write_json(args.out, {"minilm_humor_dev": result, "_meta": meta})
    print(
        f"{len(features)} texts: minitune {result['texts_per_s']['minitune']} texts/s, onnxruntime "
        f"{result['texts_per_s']['onnxruntime']} texts/s (x{result['onnxruntime_speedup_median']} "
        f"rounds {result['onnxruntime_speedup_rounds']}), max |dp| {result['max_abs_prob_diff']:.2e}"
    )
    return result


if __name__ == "__main__":
    main()
