"""Tests for minitune.train.optim: weight-decay split against Hugging Face's Trainer rule on tiny real models,
layer-wise lr multipliers by hand, schedules against transformers' schedule functions and closed forms, and the
plateau schedule against torch's ReduceLROnPlateau."""

import math

import pytest
import torch

from minitune.errors import ConfigError
from minitune.train.optim import (
    PlateauConfig,
    build_optimizer,
    build_scheduler,
    count_layers,
    layer_depth,
    param_groups,
)

transformers = pytest.importorskip("transformers", reason="transformers provides the reference models and rules")


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(cfg)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        num_labels=3,
        pad_token_id=0,
    )
    return transformers.LlamaForSequenceClassification(cfg)


def hf_decay_names(model: torch.nn.Module) -> set[str]:
    # The method does not use `self`; it is the Trainer's own decay/no-decay rule.
    return set(transformers.Trainer.get_decay_parameter_names(None, model))


def grouped_names(groups) -> dict[str, str]:
    return {n: g["name"] for g in groups for n in g["param_names"]}


@pytest.mark.parametrize("model_name", ["bert", "llama"])
def test_decay_split_matches_hf_trainer(request, model_name):
    model = request.getfixturevalue(model_name)
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert decayed == hf_decay_names(model)
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"] == "no_decay")
    # every trainable parameter sits in exactly one group, and the groups hold the tensors the names say
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    params = dict(model.named_parameters())
    for g in groups:
        assert all(p is params[n] for n, p in zip(g["param_names"], g["params"]))


def test_layer_depths_by_name():
    assert layer_depth("bert.embeddings.word_embeddings.weight", 2) == 0
    assert layer_depth("bert.embeddings.LayerNorm.weight", 2) == 0
    assert layer_depth("model.embed_tokens.weight", 2) == 0
    assert layer_depth("bert.encoder.layer.0.attention.self.query.weight", 2) == 1
    assert layer_depth("model.layers.1.mlp.up_proj.weight", 2) == 2
    assert layer_depth("distilbert.transformer.layer.5.ffn.lin1.bias", 6) == 6
    assert layer_depth("roberta.encoder.layer.11.output.dense.lora_A.weight", 12) == 12
    assert layer_depth("deberta.encoder.rel_embeddings.weight", 2) == 0
    assert layer_depth("deberta.encoder.LayerNorm.bias", 2) == 0
    assert layer_depth("deberta.encoder.layer.1.attention.self.query_proj.weight", 2) == 2
    for head in (
        "bert.pooler.dense.weight",
        "classifier.weight",
        "score.weight",
        "pre_classifier.bias",
        "model.norm.weight",
        "classifier.out_proj.weight",
    ):
        assert layer_depth(head, 2) == 3


def test_llrd_multipliers_by_hand(bert, llama):
    lr, decay = 1e-3, 0.5
    # L = 2: head lr, layer1 lr*0.5, layer0 lr*0.25, embeddings lr*0.125
    expected = {"head": 1e-3, "layer1": 5e-4, "layer0": 2.5e-4, "embeddings": 1.25e-4}
    for model in (bert, llama):
        assert count_layers(model) == 2
        groups = param_groups(model, lr, 0.01, llrd=decay)
        for g in groups:
            assert g["lr"] == pytest.approx(expected[g["name"].split(".")[0]], rel=1e-12)
        decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
        assert decayed == hf_decay_names(model)  # llrd does not change the decay split
    names = grouped_names(param_groups(bert, lr, 0.01, llrd=decay))
    assert names["bert.embeddings.LayerNorm.weight"] == "embeddings.no_decay"
    assert names["bert.embeddings.word_embeddings.weight"] == "embeddings.decay"
    assert names["bert.encoder.layer.1.output.dense.bias"] == "layer1.no_decay"
    assert names["bert.pooler.dense.weight"] == "head.decay"
    assert names["classifier.bias"] == "head.no_decay"
    names = grouped_names(param_groups(llama, lr, 0.01, llrd=decay))
    assert names["model.embed_tokens.weight"] == "embeddings.decay"
    assert names["model.layers.0.input_layernorm.weight"] == "layer0.no_decay"
    assert names["model.norm.weight"] == "head.no_decay"
    assert names["score.weight"] == "head.decay"


def test_frozen_parameters_left_out_and_depths_kept(bert):
    for p in bert.bert.embeddings.parameters():
        p.requires_grad_(False)
    try:
        groups = param_groups(bert, 1e-3, 0.01, llrd=0.5)
    finally:
        for p in bert.bert.embeddings.parameters():
            p.requires_grad_(True)
    names = grouped_names(groups)
    assert not any("embeddings" in n for n in names)
    assert names["bert.encoder.layer.0.attention.self.query.weight"] == "layer0.decay"
    assert {g["name"]: g["lr"] for g in groups}["layer0.decay"] == pytest.approx(2.5e-4)


def test_bad_values_name_the_flag(bert):
    with pytest.raises(ConfigError, match="^llrd"):
        param_groups(bert, 1e-3, 0.01, llrd=1.5)
    with pytest.raises(ConfigError, match="^lr "):
        param_groups(bert, 0.0, 0.01)
    with pytest.raises(ConfigError, match="^weight_decay"):
        param_groups(bert, 1e-3, -1.0)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        param_groups(frozen, 1e-3, 0.01)


def test_build_optimizer_steps_with_decoupled_decay():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is True  # CPU parameters get the fused kernel too
    weight = model[0].weight.detach().clone()
    bias = model[0].bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decoupled decay moves a parameter
    opt.step()
    assert torch.allclose(model[0].weight, weight * (1 - 0.1 * 0.5))
    assert torch.equal(model[0].bias, bias)


# ------------------------------------------------------------------------------------------------ schedules


def two_group_optimizer() -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 2.5e-4}], foreach=True)


@pytest.mark.parametrize(
    "name,hf_fn",
    [
        ("cosine", "get_cosine_schedule_with_warmup"),
        ("linear", "get_linear_schedule_with_warmup"),
        ("constant", "get_constant_schedule_with_warmup"),
    ],
)
def test_schedules_match_transformers_every_step(name, hf_fn):
    total, warmup = 23, 5
    ours_opt, ref_opt = two_group_optimizer(), two_group_optimizer()
    ours = build_scheduler(ours_opt, name, total_steps=total, warmup_steps=warmup)
    fn = getattr(transformers.optimization, hf_fn)
    kwargs = {"num_warmup_steps": warmup} | ({} if name == "constant" else {"num_training_steps": total})
    ref = fn(ref_opt, **kwargs)
    for _ in range(total + 2):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-12, abs=1e-18)
        ours.step()
        ours.step(metric=0.5)  # evaluations do not move step-based schedules
        ref_opt.step()  # no gradients: a no-op that keeps torch's call-order check quiet
        ref.step()


def test_schedule_closed_forms_by_hand():
    opt = two_group_optimizer()
    cosine = build_scheduler(opt, "cosine", total_steps=10, warmup_steps=2)
    values = []
    for _ in range(11):
        values.append(cosine.get_last_lr()[0] / 1e-3)
        cosine.step()
    # warmup 0, 1/2, then 0.5 * (1 + cos(pi * (s - 2) / 8))
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 11)]
    assert values == pytest.approx(expected, abs=1e-12)
    assert values[6] == pytest.approx(0.5) and values[10] == pytest.approx(0.0, abs=1e-12)
    linear = build_scheduler(two_group_optimizer(), "linear", total_steps=10, warmup_steps=2)
    for _ in range(4):
        linear.step()
    assert linear.get_last_lr() == pytest.approx([0.75e-3, 0.75 * 2.5e-4])  # 1 - (4 - 2) / 8


def test_plateau_matches_torch_reduce_on_plateau():
    metrics = [0.5, 0.6, 0.6, 0.59, 0.6, 0.61, 0.61, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    cfg = PlateauConfig(mode="max", factor=0.5, patience=2, threshold=1e-3, cooldown=1, min_lr=2e-4)
    ours_opt, ref_opt = two_group_optimizer(), two_group_optimizer()
    ours = build_scheduler(ours_opt, "plateau", total_steps=0, warmup_steps=0, plateau=cfg)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        ref_opt, mode="max", factor=0.5, patience=2, threshold=1e-3, cooldown=1, min_lr=2e-4
    )
    reduced = 0
    for m in metrics:
        ours.step()  # steps between evaluations do not change the lr after warmup
        ours.step(metric=m)
        ref.step(m)
        assert ours.get_last_lr() == pytest.approx([g["lr"] for g in ref_opt.param_groups], rel=1e-12)
        reduced += ours.get_last_lr()[0] < 1e-3
    assert reduced > 0 and ours.get_last_lr()[1] == pytest.approx(2e-4)  # the floor was reached


def test_plateau_warms_up_and_ignores_metrics_meanwhile():
    cfg = PlateauConfig(mode="min", factor=0.1, patience=0)
    sched = build_scheduler(two_group_optimizer(), "plateau", total_steps=0, warmup_steps=4, plateau=cfg)
    lrs = []
    for step in range(4):
        lrs.append(sched.get_last_lr()[0])
        sched.step(metric=1.0 + step)  # worsening loss, but still warming up
        sched.step()
    assert lrs == pytest.approx([0.0, 0.25e-3, 0.5e-3, 0.75e-3])
    assert sched.get_last_lr()[0] == pytest.approx(1e-3)
    sched.step(metric=1.0)
    sched.step(metric=2.0)  # patience 0: one bad evaluation cuts the lr tenfold
    assert sched.get_last_lr() == pytest.approx([1e-4, 2.5e-5])


@pytest.mark.parametrize("name", ["cosine", "plateau"])
def test_scheduler_state_round_trip(name):
    cfg = PlateauConfig(mode="max", factor=0.5, patience=0)
    first = build_scheduler(two_group_optimizer(), name, total_steps=20, warmup_steps=3, plateau=cfg)
    for i in range(6):
        first.step()
        first.step(metric=1.0 - i)  # plateau: falling score, cuts after warmup
    state = first.state_dict()
    second = build_scheduler(two_group_optimizer(), name, total_steps=20, warmup_steps=3, plateau=cfg)
    second.load_state_dict(state)
    for i in range(6):
        assert second.get_last_lr() == first.get_last_lr()
        for sched in (first, second):
            sched.step()
            sched.step(metric=float(i % 2))
    assert second.state_dict() == first.state_dict()


def test_bad_scheduler_names_the_flag():
    with pytest.raises(ConfigError, match="^scheduler"):
        build_scheduler(two_group_optimizer(), "step", total_steps=10, warmup_steps=0)
    with pytest.raises(ConfigError, match="^warmup_steps"):
        build_scheduler(two_group_optimizer(), "linear", total_steps=10, warmup_steps=11)
