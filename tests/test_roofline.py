"""benchmarks/roofline.py: its FLOP count of a training step is torch's own count of the step's matmuls and
attention, for both stacks; its --quick run goes through every code path in seconds."""

import json

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import roofline

TINY_BERT = dict(roofline.MINILM, **roofline.TINY)


def _counted(model, stack: str, lengths: list[int]) -> int:
    b = roofline.make_batch(lengths, TINY_BERT["vocab_size"], (3, "single"), "cpu", 0)
    counter = FlopCounterMode(display=False)
    with counter:
        if stack == "minitune":
            logits = model(b["input_ids"], b["attention_mask"])
        else:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        F.cross_entropy(logits, b["labels"]).backward()
    return counter.get_total_flops()


def test_step_flops_equal_torchs_count_of_the_reference_step():
    """transformers' eager attention multiplies with explicit matmuls, which torch's counter sees (on CPU it does
    not count SDPA): its forward and backward are exactly the count, attention included."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("bert", num_labels=3, **{k: v for k, v in TINY_BERT.items() if k != "model_type"})
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").eval()
    lengths = [12, 12, 12, 12]  # no padding: the real and padded counts agree
    assert roofline.step_flops(model, TINY_BERT, lengths) == _counted(model, "transformers", lengths)
    assert roofline.step_flops(model, TINY_BERT, [4, 12], padded=True) == roofline.step_flops(
        model, TINY_BERT, [12] * 2
    )


def test_minitune_computes_at_most_the_models_count():
    """The count is the model's (what the reference computes); minitune's last block computes only the first
    token's row when the head reads [CLS], so its own matmuls are fewer: the fraction of peak counts that as speed."""
    torch.manual_seed(0)
    model = roofline.build_minitune(TINY_BERT, 3).eval()
    lengths = [12, 12, 12, 12]
    h, layers = TINY_BERT["hidden_size"], TINY_BERT["num_hidden_layers"]
    attention = 3 * 4 * h * sum(n * n for n in lengths) * layers  # SDPA, which the counter leaves out on CPU
    counted, ours = _counted(model, "minitune", lengths), roofline.step_flops(model, TINY_BERT, lengths)
    per_layer_linear = 3 * 2 * sum(lengths) * (4 * h * h + 2 * h * TINY_BERT["intermediate_size"])
    assert ours - attention - per_layer_linear < counted < ours - attention


def test_gemm_shapes_cover_forward_and_both_gradients():
    shapes = roofline.gemm_shapes({"hidden_size": 8, "intermediate_size": 32}, tokens=5)
    assert (5, 8, 32) in shapes and (5, 32, 8) in shapes and (8, 5, 32) in shapes  # x W, dY W^T, X^T dY
    assert len(shapes) == 9


def test_quick_run_writes_every_table(tmp_path):
    out = tmp_path / "roofline.json"
    doc = roofline.main(["--quick", "--shapes", "minilm", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["shapes"].keys() == {"minilm"} and doc["machine"]["threads"] >= 1
    shape = saved["shapes"]["minilm"]
    assert {r["stack"] for r in shape["steps"]} == {"minitune", "transformers"}
    assert {(r["batching"], r["precision"]) for r in shape["steps"]} == {
        (b, p) for b in ("bucketed", "random") for p in ("fp32", "bf16")
    }
    assert all(shape["gemm"][p]["peak_gflops"] > 0 for p in ("fp32", "bf16"))
    assert all(r["fraction_of_peak"] > 0 and r["real_gflop_per_step"] > 0 for r in shape["steps"])
    assert {r["precision"] for r in shape["attention"]} == {"fp32", "bf16"}


def test_cpu_attention_quick_run_measures_both_and_restores_the_kernel(tmp_path):
    from benchmarks import cpu_attention

    kernel = F.scaled_dot_product_attention
    doc = cpu_attention.main(["--quick", "--out", str(tmp_path / "a.json")])
    assert F.scaled_dot_product_attention is kernel
    assert set(doc["fp32_speedup"]) == {"train", "infer"} and all(v > 0 for v in doc["fp32_speedup"].values())
    # the fp32 variant computes in fp32 and returns what autocast would (bf16)
    q = torch.randn(1, 2, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpu_attention.in_fp32(q, q, q)
    assert y.dtype == torch.bfloat16 and torch.equal(y, kernel(q, q, q).to(torch.bfloat16))
