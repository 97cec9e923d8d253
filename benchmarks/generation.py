"""Generation speed with and without the KV cache: greedy decoding of SmolLM2-135M-Instruct (the `smollm2` alias).

Prompts are semeval dev tweets in SmolLM2's chat template with the default multi-label instruction (about 100
tokens each), left-padded in batches; every configuration generates exactly `--new-tokens` tokens (no eos stop).
With the cache the prompt is prefilled once and each step runs one token per row; without it every step runs the
whole sequence again (models/generate.py, use_cache=False). tokens/s = batch x new tokens / wall time of the
whole generate() call, prefill included. Configurations alternate round-robin in one process (the model is
shared; no memory figures here), each timed `--repeats` times after one untimed warmup; the median is reported and
the ratio cached / uncached is taken inside the run. Both paths must give the same tokens (recorded).

    OMP_NUM_THREADS=1 python -m benchmarks.generation
    python -m benchmarks.generation --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_common_args, fmt, resolve_common, run_meta, table, write_json
from minitune.checkpoints.load import load_model, load_tokenizer
from minitune.data.chat import load_chat_template
from minitune.data.prompts import default_instruction
from minitune.data.tasks import load_task
from minitune.models.generate import GenerationConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    resolve_common(args, "generation")
    if args.quick:
        args.batches, args.new_tokens = [1, 2], 4
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, head="causal_lm"), load_tokenizer(args.model)
    chat = load_chat_template(args.model, tok)
    task = load_task("semeval", Path(args.data_dir))
    prompts = [
        chat.encode(tok, [{"role": "user", "content": default_instruction(task, ex)}])
        for ex in task.dev[: max(args.batches)]
    ]
    configs = [(b, cache) for b in args.batches for cache in (True, False)]
    times: dict = {c: [] for c in configs}
    tokens: dict = {}
    for rnd in range(args.repeats + 1):  # round 0 is the warmup
        for b, cache in configs[rnd % len(configs) :] + configs[: rnd % len(configs)]:
            gen = GenerationConfig(max_new_tokens=args.new_tokens, use_cache=cache, pad_token_id=tok.eos_token_id)
            t0 = time.perf_counter()
            out = generate(model, prompts[:b], gen)
            dt = time.perf_counter() - t0
            tokens[(b, cache)] = out
            if rnd:
                times[(b, cache)].append(dt)
    rows, results = [], {}
    for b in args.batches:
        with_cache, without = statistics.median(times[(b, True)]), statistics.median(times[(b, False)])
        n = b * args.new_tokens
        same = tokens[(b, True)] == tokens[(b, False)]
        results[f"batch{b}"] = {
            "prompt_tokens": [len(p) for p in prompts[:b]],
            "new_tokens_per_row": args.new_tokens,
            "seconds_cache": times[(b, True)],
            "seconds_no_cache": times[(b, False)],
            "tokens_per_s_cache": n / with_cache,
            "tokens_per_s_no_cache": n / without,
            "speedup": without / with_cache,
            "same_tokens": same,
        }
        rows.append(
            {
                "batch": str(b),
                "prompt tokens": f"{min(len(p) for p in prompts[:b])}-{max(len(p) for p in prompts[:b])}",
                "tok/s cache": fmt(n / with_cache, ".1f"),
                "tok/s no cache": fmt(n / without, ".1f"),
                "x speedup": fmt(without / with_cache, ".2f"),
                "same tokens": str(same),
            }
        )
    print(table(rows, list(rows[0])))
    path = write_json(args.out, {"_meta": run_meta(args), **results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
