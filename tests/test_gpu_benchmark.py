"""benchmarks/gpu.py must work the first time a GPU is lent: its --dry-run runs every code path (the three shapes, both
stacks, both length distributions and batchings, both attention-dropout settings, LoRA and QLoRA) at tiny shapes on
CPU, and writes the JSON and the table the real run writes."""

import json

import pytest

from benchmarks import gpu


@pytest.mark.slow  # ~7 s: builds 10 tiny models in both stacks
def test_dry_run_covers_every_row_of_the_gpu_benchmark(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    gpu.main(["--dry-run", "--out", str(out)])
    doc = json.loads(out.read_text())
    rows = doc["encoders"]
    combos = {(r["shape"], r["attn_dropout"], r["stack"], r["task"], r["batching"]) for r in rows}
    assert len(combos) == len(rows) == 3 * 2 * 2 * 2 * 2 + 2 * 2 * 2  # + modernbert's two long batch sets
    for r in rows:
        assert r["steps"] == 2 and r["real_tokens"] > 0 and r["step_s"] > 0
        assert 0 < r["mfu"] < r["mfu_all_params"]  # embedding tables add parameters but no per-token FLOPs
        assert 0 <= r["pad_share"] < (0.9 if r["batching"] == "random" else 0.1)
    random = [r["pad_share"] for r in rows if r["batching"] == "random"]
    assert min(random) > 0.1  # random batches of these length spreads do pad
    assert {r["config"] for r in doc["adapters"]} == {"lora", "qlora"}
    lora, qlora = sorted(doc["adapters"], key=lambda r: r["config"])
    assert qlora["trainable"] == lora["trainable"] and qlora["params"] == lora["params"]
    assert "nominal" in doc["_meta"]["peak_source"]
    table = capsys.readouterr().out
    assert table.count("| xlm-roberta-large |") == 8 and table.count("| modernbert-large |") == 12
    assert "QLoRA / LoRA step time" in table
