"""Tests for minitune.train.amp: autocast choice per precision, and the dynamic loss scaler — skipped steps leave
weights and AdamW state untouched, growth/backoff, exact unscaling, state round trip, and the scale and weight
trajectory side by side with torch.amp.GradScaler."""

import copy

import pytest
import torch

from minitune.errors import CheckpointError, ConfigError
from minitune.train.amp import DynamicLossScaler, autocast_context, resolve_precision

# ------------------------------------------------------------------------------------------------ autocast


def test_fp32_is_plain_and_bf16_autocasts_on_cpu():
    a = torch.randn(4, 4)
    with autocast_context("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    with autocast_context("bf16", torch.device("cpu")):
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32  # left the context


def test_fp16_on_cpu_follows_what_torch_supports():
    # torch >= 2.4 lists float16 among CPU autocast dtypes; older builds disable autocast with a warning.
    try:
        dtype = resolve_precision("fp16", "cpu")
    except ConfigError as err:
        assert "--precision" in str(err)
        return
    assert dtype == torch.float16
    a = torch.randn(4, 4)
    with autocast_context("fp16", "cpu"):
        assert (a @ a).dtype == torch.float16


def test_precision_errors_name_the_flag():
    with pytest.raises(ConfigError, match="^precision"):
        resolve_precision("fp8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^precision bf16.*no GPU"):
            resolve_precision("bf16", "cuda")


# ------------------------------------------------------------------------------------------------ scaler


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def loss_of(model: torch.nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(5, 4, generator=g)
    y = torch.randint(0, 3, (5,), generator=g)
    return torch.nn.functional.cross_entropy(model(x), y)


def poison(model: torch.nn.Module, value: float) -> None:
    model[2].weight.grad[1, 2] = value


def test_overflow_skips_step_keeps_weights_and_adam_state_and_backs_off():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = DynamicLossScaler(init_scale=2.0**10)
    scaler.scale(loss_of(model, 0)).backward()
    assert scaler.step(opt) is True  # one clean step so AdamW has state to protect
    scaler.update()
    opt.zero_grad()

    weights = copy.deepcopy(model.state_dict())
    adam = copy.deepcopy(opt.state_dict())
    scaler.scale(loss_of(model, 1)).backward()
    poison(model, float("inf"))
    assert scaler.unscale_(opt) is True
    assert scaler.step(opt) is False
    scaler.update()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name])
    for pid, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, adam["state"][pid][key]), (pid, key)
    assert scaler.get_scale() == 2.0**9


def test_growth_after_interval_clean_steps():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=8.0, growth_interval=3)
    scales = []
    for step in range(7):
        opt.zero_grad()
        scaler.scale(loss_of(model, step)).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == [8.0, 8.0, 16.0, 16.0, 16.0, 32.0, 32.0]


def test_unscaled_grads_equal_grads_of_unscaled_loss():
    reference = tiny_model()
    loss_of(reference, 3).backward()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=2.0**16)
    scaled = scaler.scale(loss_of(model, 3))
    assert scaled.item() == pytest.approx(loss_of(model, 3).item() * 2.0**16)
    scaled.backward()
    assert not torch.equal(model[0].weight.grad, reference[0].weight.grad)
    assert scaler.unscale_(opt) is False
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad)  # a power-of-two scale commutes exactly with every rounding
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)


def test_disabled_scaler_passes_through_but_guards_non_finite():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(enabled=False)
    loss = loss_of(model, 0)
    assert scaler.scale(loss) is loss and scaler.get_scale() == 1.0
    loss.backward()
    before = copy.deepcopy(model.state_dict())
    poison(model, float("nan"))
    grad = model[0].weight.grad.clone()
    assert scaler.step(opt) is False
    assert torch.equal(model[0].weight.grad, grad)  # nothing divided
    scaler.update()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    opt.zero_grad()
    loss_of(model, 1).backward()
    assert scaler.step(opt) is True
    scaler.update()
    assert scaler.get_scale() == 1.0
    assert not torch.equal(model[0].weight, before["0.weight"])


def run(scaler, model, opt, pattern):
    """Train with `pattern` ('.' clean, 'i' inf, 'n' NaN in one grad); returns the scale after each update."""
    scales = []
    for step, kind in enumerate(pattern):
        opt.zero_grad()
        scaler.scale(loss_of(model, step)).backward()
        if kind != ".":
            poison(model, float("inf") if kind == "i" else float("nan"))
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
    return scales


PATTERN = "...i..n.....ii......"


@pytest.mark.parametrize("growth,backoff", [(2.0, 0.5), (3.0, 0.3)])
def test_trajectory_matches_torch_grad_scaler(growth, backoff):
    reference_scaler = torch.amp.GradScaler(
        "cpu", init_scale=1000.0, growth_factor=growth, backoff_factor=backoff, growth_interval=3
    )
    if not reference_scaler.is_enabled():
        pytest.skip(f"torch {torch.__version__} has no CPU GradScaler to compare with")
    ours = DynamicLossScaler(init_scale=1000.0, growth_factor=growth, backoff_factor=backoff, growth_interval=3)
    m1, m2 = tiny_model(), tiny_model()
    o1 = torch.optim.AdamW(m1.parameters(), lr=1e-2)
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    ours_scales = run(ours, m1, o1, PATTERN)
    ref_scales = run(reference_scaler, m2, o2, PATTERN)
    assert ours_scales == ref_scales  # float32 rounding included (1000 x 3 x 0.3 ... is not exact)
    assert len(set(ours_scales)) > 3
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)  # same unscaled grads, same skipped steps, so bit-identical AdamW updates


def test_state_round_trip_and_corrupt_state():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    first = DynamicLossScaler(init_scale=64.0, growth_interval=4)
    run(first, model, opt, "..i..")
    state = first.state_dict()
    assert state["scale"] == 32.0 and state["growth_tracker"] == 2
    second = DynamicLossScaler(init_scale=2.0**16)
    second.load_state_dict(state)
    assert second.state_dict() == state
    clone = copy.deepcopy(model)
    opt2 = torch.optim.SGD(clone.parameters(), lr=0.01)
    assert run(first, model, opt, "...i.") == run(second, clone, opt2, "...i.")
    with pytest.raises(CheckpointError, match="scale"):
        second.load_state_dict({"enabled": True})
