"""Parity of our encoders with transformers on tiny random configs, fp32, padded and ragged batches."""

import pytest
import torch
import transformers
from torch.testing import assert_close

import minitune
from tolerance import assert_close_scaled

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
    initializer_range=0.2,
)

CONFIGS = {
    "bert": lambda: transformers.BertConfig(**TINY, pad_token_id=0, hidden_act="gelu"),
    "roberta": lambda: transformers.RobertaConfig(
        **{**TINY, "type_vocab_size": 1, "max_position_embeddings": 66},
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
    ),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(
        **{**TINY, "type_vocab_size": 1, "max_position_embeddings": 66},
        pad_token_id=1,
        layer_norm_eps=1e-5,
        hidden_act="gelu_new",
    ),
    "distilbert": lambda: transformers.DistilBertConfig(
        vocab_size=99,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=37,
        max_position_embeddings=64,
        pad_token_id=0,
        initializer_range=0.2,
    ),
}
HF_HEADS = {
    "sequence": transformers.AutoModelForSequenceClassification,
    "multiple_choice": transformers.AutoModelForMultipleChoice,
}


def ragged_batch(pad_id: int, lengths=(11, 3, 7, 11, 1), vocab=99, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad_id)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    return ids, mask * 1, types * mask


def hf_model(model_type, head, tmp_path, num_labels=3):
    torch.manual_seed(1)
    cfg = CONFIGS[model_type]()
    cfg.num_labels = num_labels
    ref = HF_HEADS[head].from_config(cfg).eval()
    ref.save_pretrained(tmp_path)
    return ref, cfg


@pytest.mark.parametrize("model_type", list(CONFIGS))
@pytest.mark.parametrize("head", ["sequence", "multiple_choice"])
def test_logits_match_transformers(model_type, head, tmp_path):
    ref, cfg = hf_model(model_type, head, tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3 if head == "sequence" else None, head=head)
    assert set(ours.state_dict()) == set(ref.state_dict()) - {k for k in ref.state_dict() if k.endswith("position_ids")}
    ids, mask, types = ragged_batch(cfg.pad_token_id)
    if model_type != "bert":
        types = None
    if head == "multiple_choice":  # (B, C, T): 5 examples as 1 question x 5 choices, and again reversed
        ids, mask = torch.stack([ids, ids.flip(0)]), torch.stack([mask, mask.flip(0)])
        types = None if types is None else torch.stack([types, types.flip(0)])
    kw = {} if types is None else {"token_type_ids": types}
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, **kw).logits
        got = ours(ids, mask, **kw)
    assert got.shape == expected.shape
    assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_padding_does_not_change_logits(model_type, tmp_path):
    """Pooling under padding: a sequence padded to 11 gives the logits it gives alone."""
    hf_model(model_type, "sequence", tmp_path)
    ours = minitune.load_model(tmp_path)
    ids, mask, _ = ragged_batch(CONFIGS[model_type]().pad_token_id)
    with torch.no_grad():
        batch = ours(ids, mask)
        alone = torch.cat([ours(ids[i : i + 1, : int(mask[i].sum())]) for i in range(len(ids))])
    assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_roberta_position_ids_skip_pads():
    from minitune.models.bert import BertConfig, Embeddings

    emb = Embeddings(BertConfig(model_type="roberta", vocab_size=10, hidden_size=8, pad_token_id=1))
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 5, 1, 6, 2, 1]])
    # First real token at pad+1; pads keep the pad position; a pad in the middle does not advance the count.
    assert emb.position_ids(ids).tolist() == [[2, 3, 4, 5, 1, 1], [2, 3, 1, 4, 5, 1]]
    ref = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(ids, 1)
    assert emb.position_ids(ids).tolist() == ref.tolist()


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta", "distilbert"])
@pytest.mark.parametrize("head", ["sequence", "multiple_choice"])
def test_unpadded_execution_matches_padded_and_reference(model_type, head, tmp_path):
    """Per-token layers on real tokens only: same logits as transformers, same gradients as our padded path."""
    ref, cfg = hf_model(model_type, head, tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3 if head == "sequence" else None, head=head)
    ids, mask, _ = ragged_batch(cfg.pad_token_id)
    if head == "multiple_choice":
        ids, mask = torch.stack([ids, ids.flip(0)]), torch.stack([mask, mask.flip(0)])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
    grads = {}
    for flag in (True, False):
        ours.set_unpadded(flag)
        ours.zero_grad()
        logits = ours(ids, mask)
        assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        logits.square().sum().backward()
        grads[flag] = {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}
    for name, g in grads[False].items():  # gradients reach ~40: rounding scales with them
        assert_close_scaled(grads[True][name], g, atol=1e-5, rtol=1e-5, name=name)


@pytest.mark.parametrize("per_sequence", [True, False])
def test_packed_attention_equals_masked_attention_on_the_padded_block(per_sequence):
    """Both packed attention paths (sequence by sequence on CPU; one masked call on the re-padded block, the GPU
    path) give the padded path's outputs at real tokens, and the same gradients for q, k and v."""
    from minitune.models.attention import Packing, attention_bias, self_attention

    _, mask, _ = ragged_batch(0)
    B, T, H, nh = *mask.shape, 8, 2
    q, k, v = (torch.randn(B, T, H, generator=torch.Generator().manual_seed(i), requires_grad=True) for i in range(3))
    padded = self_attention(q, k, v, nh, attention_bias(mask), None, 0.0)
    pack = Packing(mask, per_sequence=per_sequence)
    assert (pack.lengths is not None) == per_sequence
    packed = self_attention(pack.unpad(q), pack.unpad(k), pack.unpad(v), nh, attention_bias(mask), pack, 0.0)
    assert_close(pack.pad(packed), padded * mask[..., None], atol=1e-6, rtol=1e-5)
    w = torch.randn(B, T, H, generator=torch.Generator().manual_seed(9)) * mask[..., None]  # loss on real tokens
    grads = [torch.autograd.grad((out * w).sum(), (q, k, v)) for out in (padded, pack.pad(packed))]
    for name, g_padded, g_packed in zip("qkv", *grads):
        assert_close_scaled(g_packed, g_padded, atol=1e-6, rtol=1e-5, name=f"d{name}")


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_gradient_checkpointing_gives_the_same_gradients(model_type, tmp_path):
    hf_model(model_type, "sequence", tmp_path)
    ours = minitune.load_model(tmp_path).train()
    ids, mask, _ = ragged_batch(0)
    grads = []
    for flag in (False, True):
        for m in ours.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = flag
        torch.manual_seed(0)  # the same dropout masks in both runs (checkpointing replays the RNG state)
        ours.zero_grad()
        ours(ids, mask).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters()})
    for name in grads[0]:  # gradients reach ~60, where 1e-6 is below float32's spacing
        assert_close_scaled(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, name=name)


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta", "distilbert"])
@pytest.mark.parametrize("unpadded", [True, False])
def test_last_block_on_first_tokens_gives_the_reference_gradients(model_type, unpadded, tmp_path):
    """The heads read only the first token, so the last block runs its queries, MLP and norms on B rows: the
    logits and every parameter's gradient still equal transformers', which runs that block on every token."""
    ref, cfg = hf_model(model_type, "sequence", tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=3).eval()  # eval: no dropout, so both draw nothing
    ours.set_unpadded(unpadded)
    ids, mask, _ = ragged_batch(cfg.pad_token_id)
    rows = []
    last = [m for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)][-1]  # the last block's output norm
    last.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    grads = []
    for model in (ours, ref):
        model.zero_grad()
        logits = model(ids, mask) if model is ours else model(input_ids=ids, attention_mask=mask).logits
        (logits * torch.arange(1.0, 4.0)).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert rows == [len(ids)]  # (B, H): one row per sequence, not B x T or N real tokens
    assert set(grads[0]) == set(grads[1])
    for name, g in grads[1].items():  # gradients reach ~110: the tolerance scales with each tensor's largest
        assert_close_scaled(grads[0][name], g, atol=1e-5, rtol=1e-5, name=name)
