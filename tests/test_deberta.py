"""DeBERTa-v2/v3 (models/deberta.py) against transformers' DebertaV2 on tiny random configs, fp32.

The ragged batch's longest sequences (20 tokens) reach past the log-bucket threshold (position_buckets / 2 = 4)
and past the bucket table itself, and the v2-like config's max_relative_positions (6) is below the sequence
length, so both the log buckets and the clamp to the relative table are exercised.
"""

import pytest
import torch
import transformers
from torch.testing import assert_close

import minitune
from minitune.errors import CheckpointError
from test_encoders import TINY as ENCODER_TINY
from tolerance import assert_close_scaled

TINY = {**ENCODER_TINY, "pad_token_id": 0, "hidden_act": "gelu"}
# v3: shared keys, both position terms, layer-normed relative table, log buckets, max_relative_positions -1
V3 = dict(
    relative_attention=True,
    pos_att_type="p2c|c2p",
    share_att_key=True,
    norm_rel_ebd="layer_norm",
    position_buckets=8,
    max_relative_positions=-1,
    position_biased_input=False,
    type_vocab_size=0,
)
VARIANTS = {
    "v3": V3,
    # v2: own position projections, no buckets, a relative span (6) below the sequence length
    "v2": {**V3, "share_att_key": False, "position_buckets": -1, "max_relative_positions": 6},
    # content-to-position only, absolute positions and token types on, no relative LayerNorm, tanh pooler
    "c2p": {
        **V3,
        "pos_att_type": ["c2p"],
        "share_att_key": False,
        "norm_rel_ebd": "none",
        "position_buckets": -1,
        "position_biased_input": True,
        "type_vocab_size": 2,
        "pooler_hidden_act": "tanh",
    },
    # v3 with factorised embeddings (embedding_size != hidden_size: embed_proj)
    "embed_proj": {**V3, "embedding_size": 24},
}
HF_HEADS = {
    "sequence": transformers.DebertaV2ForSequenceClassification,
    "multiple_choice": transformers.DebertaV2ForMultipleChoice,
}
LENGTHS = (20, 3, 13, 20, 1)


def ragged_batch(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 99, (n,), generator=g)
        mask[i, :n] = 1
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types * mask


def hf_model(variant, head, tmp_path, num_labels=3, **extra):
    torch.manual_seed(1)
    cfg = transformers.DebertaV2Config(**{**TINY, **VARIANTS[variant], **extra})
    cfg.num_labels = num_labels
    ref = HF_HEADS[head](cfg).eval()
    ref.save_pretrained(tmp_path)
    return ref, cfg


def as_choices(ids, mask, types):
    """(B, T) -> (2, B, T): the batch as one question with 5 choices, and again reversed."""
    return tuple(torch.stack([t, t.flip(0)]) for t in (ids, mask, types))


def grads_of(model, logits):
    (logits * torch.arange(1.0, logits.shape[-1] + 1)).square().sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("head", ["sequence", "multiple_choice"])
@pytest.mark.parametrize("unpadded", [False, True])
def test_logits_and_gradients_match_transformers(variant, head, unpadded, tmp_path):
    ref, cfg = hf_model(variant, head, tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3 if head == "sequence" else None, head=head)
    assert set(ours.state_dict()) == {k for k in ref.state_dict() if not k.endswith("position_ids")}
    ours.set_unpadded(unpadded)
    batch = ragged_batch()
    if head == "multiple_choice":
        batch = as_choices(*batch)
    ids, mask, types = batch
    expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    got = ours(ids, mask, types)
    assert got.shape == expected.shape
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    g_ref, g_ours = grads_of(ref, expected), grads_of(ours, got)
    assert set(g_ours) == set(g_ref)
    for name, g in g_ref.items():
        assert_close_scaled(g_ours[name], g, atol=1e-5, rtol=1e-5, name=name)


def test_unpadded_and_first_token_paths_are_taken(tmp_path):
    """The parity above covers the fast paths only if they run: pads leave, the last block computes B rows."""
    hf_model("v3", "sequence", tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3)
    ours.set_unpadded(True)
    rows = []
    last = ours.deberta.encoder.layer[-1].output["LayerNorm"]
    first = ours.deberta.encoder.layer[0].output["LayerNorm"]
    last.register_forward_hook(lambda m, i, o: rows.append(("last", tuple(i[0].shape))))
    first.register_forward_hook(lambda m, i, o: rows.append(("first", tuple(i[0].shape))))
    ids, mask, _ = ragged_batch()
    ours(ids, mask)
    assert rows == [("first", (int(mask.sum()), 32)), ("last", (len(ids), 32))]


def test_padding_does_not_change_logits(tmp_path):
    hf_model("v3", "sequence", tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3)
    ids, mask, _ = ragged_batch()
    with torch.no_grad():
        batch = ours(ids, mask)
        alone = torch.cat([ours(ids[i : i + 1, : int(mask[i].sum())]) for i in range(len(ids))])
    assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_log_buckets_equal_the_reference():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    from minitune.models.deberta import log_bucket

    rel = torch.arange(-600, 601)
    for buckets, max_pos in ((256, 512), (8, 64), (16, 24)):
        assert torch.equal(log_bucket(rel, buckets, max_pos), make_log_bucket_position(rel, buckets, max_pos).long())


def test_relative_table_normalised_once_per_forward_on_the_rows_read(tmp_path):
    """One LayerNorm of the table per forward (not per layer), over the 2T - 1 rows that T tokens can read."""
    from minitune.models.deberta import DebertaConfig, RelativeIndex

    hf_model("v3", "sequence", tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3)
    rows = []
    ours.deberta.encoder.LayerNorm.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    ours(*ragged_batch()[:2])
    assert rows == [13]  # v3 test config: 8 buckets, max 64: distance 19 buckets to 6, rows 8-6..8+6
    v3 = DebertaConfig("deberta-v2", 128100, relative_attention=True, position_buckets=256, max_relative_positions=-1)
    assert RelativeIndex(v3, torch.device("cpu"), 20).rows == slice(256 - 19, 256 + 20)  # 39 of 512 rows
    assert RelativeIndex(v3, torch.device("cpu"), 512).rows == slice(1, 512)  # -511 buckets to -255


def test_save_pretrained_round_trip_into_transformers(tmp_path):
    ref, _ = hf_model("v3", "sequence", tmp_path / "hf")
    ours = minitune.load_model(tmp_path / "hf", num_labels=3)
    with torch.no_grad():
        for p in ours.parameters():  # move away from the reference's weights so a stale copy would show
            p.add_(0.01 * torch.randn_like(p))
    minitune.save_pretrained(ours, tmp_path / "ours", label_names=["a", "b", "c"])
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == "DebertaV2ForSequenceClassification"
    assert back.config.id2label == {0: "a", 1: "b", 2: "c"}
    ids, mask, types = ragged_batch()
    with torch.no_grad():
        assert_close(back(input_ids=ids, attention_mask=mask).logits, ours(ids, mask), atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    hf_model("v3", "sequence", tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3).train()
    ids, mask, _ = ragged_batch()
    grads = []
    for flag in (False, True):
        ours.deberta.gradient_checkpointing = flag
        torch.manual_seed(0)  # the same dropout masks in both runs
        ours.zero_grad()
        ours(ids, mask).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters()})
    for name in grads[0]:
        assert_close_scaled(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, name=name)


def test_fp16_scaled_query_stays_finite_where_the_unscaled_product_overflows():
    """Activations of size ~60 in a 64-wide head: q.k reaches ~2e5 > 65504 (fp16's max) before the 1/sqrt(3d)
    scale. The reference's old order (scale after the product) overflows to inf and the softmax to NaN; scaling
    the query first keeps every score near 2e5 / 13.9."""
    from minitune.models.deberta import DebertaConfig, DisentangledAttention

    cfg = DebertaConfig("deberta-v2", 10, hidden_size=64, num_attention_heads=1, pos_att_type=["c2p", "p2c"])
    cfg.relative_attention, cfg.share_att_key, cfg.position_buckets = True, True, 8
    att = DisentangledAttention(cfg).eval()
    with torch.no_grad():
        for lin in (att.query_proj, att.key_proj, att.value_proj):
            lin.weight.copy_(torch.eye(64))
            lin.bias.zero_()
    x = torch.full((1, 5, 64), 56.0).half()
    q, k = x.clone(), x.clone()
    assert torch.isinf(q @ k.transpose(-1, -2)).all()  # the unscaled product
    rel = torch.randn(16, 64).half()
    from minitune.models.deberta import RelativeIndex

    att = att.half()
    out = att.attend(q, k, x, None, att.positions(rel), RelativeIndex(cfg, x.device, 16)(5, 5))
    assert torch.isfinite(out).all()
    assert_close(out.float(), x.float(), atol=0.1, rtol=1e-2)  # equal scores: the mean of identical values


def test_fp16_autocast_gives_finite_logits_where_the_unscaled_scores_overflow(tmp_path):
    """Embeddings scaled up so layer 0's unscaled q.k exceeds fp16's 65504: under fp16 autocast the logits stay
    finite and near the fp32 ones, since every score is scaled before its matmul."""
    hf_model("v3", "sequence", tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3)
    with torch.no_grad():
        ours.deberta.embeddings.LayerNorm.weight.fill_(80.0)
    ids, mask, _ = ragged_batch()
    with torch.no_grad():
        x = ours.deberta.embeddings(ids, None, mask)
        sa = ours.deberta.encoder.layer[0].attention["self"]
        q, k = sa.heads(sa.query_proj(x)), sa.heads(sa.key_proj(x))
        assert (q @ k.transpose(-1, -2)).abs().max() > 65504  # would be inf in fp16 before the scale
        full = ours(ids, mask)
        try:
            with torch.autocast("cpu", dtype=torch.float16):
                half = ours(ids, mask)
        except RuntimeError as e:  # pragma: no cover - CPU fp16 kernels are missing on some builds
            pytest.skip(f"fp16 autocast does not run on this CPU build: {e}")
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    assert_close(half.float(), full, atol=0.02, rtol=0.02)


def test_conv_layer_refused_with_one_line(tmp_path):
    ref, cfg = hf_model("v2", "sequence", tmp_path, conv_kernel_size=3)
    with pytest.raises(CheckpointError, match="conv_kernel_size=3") as e:  # a checkpoint's file: it names it
        minitune.load_model(tmp_path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{tmp_path / 'config.json'}: ")


def test_lora_defaults_nf4_and_llrd_see_the_blocks(tmp_path):
    from minitune.adapters.lora import apply_lora
    from minitune.train.optim import param_groups

    hf_model("v3", "sequence", tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3)
    wrapped = apply_lora(ours, lora_r=4, lora_alpha=8)
    per_layer = {n.split("layer.0.", 1)[1] for n in wrapped if ".layer.0." in n}
    assert per_layer == {
        "attention.self.query_proj",
        "attention.self.key_proj",
        "attention.self.value_proj",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    ids, mask, _ = ragged_batch()
    ours(ids, mask).sum().backward()  # adapters on query/key_proj also see the shared relative table
    names = [g["name"] for g in param_groups(ours, 1e-3, 0.01, llrd=0.9)]
    assert {"layer0.decay", "layer1.decay", "head.decay"} <= set(names)

    # NF4: every linear but the head is quantized, and the model computes what the full-precision model computes
    # with those weights dequantized (the embed-less v3 path through NF4 query/key projections of the table).
    from minitune.adapters.nf4 import NF4Linear

    q = minitune.load_model(tmp_path, num_labels=3, quantize="nf4")
    full = minitune.load_model(tmp_path, num_labels=3)
    quantized = {n: m for n, m in q.named_modules() if isinstance(m, NF4Linear)}
    assert "deberta.encoder.layer.1.attention.self.query_proj" in quantized and "classifier" not in quantized
    with torch.no_grad():
        for name, m in quantized.items():
            full.get_submodule(name).weight.copy_(m.dequantize(torch.float32))
        assert_close(q(ids, mask), full(ids, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["v3", "v2"])
def test_packed_layout_with_one_masked_call_matches_transformers(variant, tmp_path, monkeypatch):
    """The accelerator layout of the unpadded path (pads re-formed around one masked attention call, not
    sequence by sequence) gives the reference's logits and gradients too."""
    from minitune.models import deberta
    from minitune.models.attention import Packing

    monkeypatch.setattr(deberta, "choose_packing", lambda mask, share: Packing(mask, per_sequence=False))
    ref, _ = hf_model(variant, "sequence", tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3)
    ids, mask, types = ragged_batch()
    expected, got = ref(input_ids=ids, attention_mask=mask).logits, ours(ids, mask)
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    g_ref, g_ours = grads_of(ref, expected), grads_of(ours, got)
    for name, g in g_ref.items():
        assert_close_scaled(g_ours[name], g, atol=1e-5, rtol=1e-5, name=name)


def test_goemotions_recipe_config_parses_and_names_the_missing_model(tmp_path, data_dir, monkeypatch, capsys):
    from pathlib import Path

    from huggingface_hub import constants

    from minitune.cli import main, parse_config

    toml = Path(__file__).resolve().parents[1] / "configs" / "goemotions-deberta-v3-large.toml"
    cfg = parse_config(["--config", str(toml)]).flat()  # checked once, by make_config
    assert (cfg["model"], cfg["lr"], cfg["batch_size"], cfg["grad_accum"]) == ("deberta-v3-large", 3e-5, 4, 4)
    assert (cfg["scheduler"], cfg["warmup_ratio"], cfg["weight_decay"], cfg["precision"]) == (
        "cosine",
        0.15,
        0.01,
        "fp16",
    )
    assert (cfg["max_length"], cfg["loss"], cfg["threshold"], cfg["oversample_rare"]) == (
        256,
        "asl:0.5+focal:0.5",
        0.2,
        100,
    )
    assert cfg["class_weights"] == "balanced"  # the inputs' checks build this loss before they look for the model
    # An empty cache, offline: the checkpoint is surely absent.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = main(["--config", str(toml), "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: model 'microsoft/deberta-v3-large' is not in the Hugging Face cache")
    assert not (tmp_path / "o").exists()


def test_unused_absolute_positions_in_a_checkpoint_are_skipped_as_the_reference_does(tmp_path):
    """v3 checkpoints may store `embeddings.position_embeddings` though position_biased_input is off; transformers
    ignores them (its `_keys_to_ignore_on_load_unexpected`), and so do we. Any other stray key still fails."""
    from safetensors.torch import load_file, save_file

    from minitune.errors import CheckpointError

    ref, _ = hf_model("v3", "sequence", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["deberta.embeddings.position_embeddings.weight"] = torch.randn(64, 32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ids, mask, _ = ragged_batch()
    with torch.no_grad():
        assert_close(
            minitune.load_model(tmp_path, num_labels=3)(ids, mask),
            ref(input_ids=ids, attention_mask=mask).logits,
            atol=1e-5,
            rtol=1e-5,
        )
    state["deberta.encoder.stray.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="deberta.encoder.stray.weight"):
        minitune.load_model(tmp_path, num_labels=3)
