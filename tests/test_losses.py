"""Losses against independent hand computations (pure Python math, element by element) and torch references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minitune.errors import ConfigError
from minitune.train.losses import (
    AsymmetricLoss,
    BCEWithLogitsLoss,
    CombinedLoss,
    CrossEntropyLoss,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    balanced_class_weights,
    balanced_pos_weight,
    build_loss,
    parse_loss_spec,
)

# Small known numbers: 3 examples, 3 classes / labels.
LOGITS = [[2.0, -1.0, 0.5], [0.1, 0.3, -2.0], [-0.5, 1.5, 1.0]]
CLASSES = [0, 2, 1]
MULTI = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
WEIGHTS = [0.5, 2.0, 1.5]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def log_softmax_row(row: list[float]) -> list[float]:
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def hand_ce(logits, targets, weights=None, smoothing=0.0) -> float:
    """torch's documented formula: weighted mean of NLL plus smoothing term over the same denominator."""
    c = len(logits[0])
    w = weights or [1.0] * c
    nll, smooth, denom = 0.0, 0.0, 0.0
    for row, t in zip(logits, targets):
        lp = log_softmax_row(row)
        nll += -w[t] * lp[t]
        smooth += sum(-w[k] * lp[k] for k in range(c))
        denom += w[t]
    return (1 - smoothing) * nll / denom + smoothing / c * smooth / denom


def hand_bce(logits, targets, pos_weight=None) -> float:
    total, n = 0.0, 0
    for row, trow in zip(logits, targets):
        for j, (x, y) in enumerate(zip(row, trow)):
            pw = pos_weight[j] if pos_weight else 1.0
            p = sigmoid(x)
            total += -(pw * y * math.log(p) + (1 - y) * math.log(1 - p))
            n += 1
    return total / n


def hand_asl(logits, targets, gamma_neg, gamma_pos, clip, eps=1e-8) -> float:
    total = 0.0
    for row, trow in zip(logits, targets):
        for x, y in zip(row, trow):
            p = sigmoid(x)
            if y == 1:
                total += -((1 - p) ** gamma_pos) * math.log(max(p, eps))
            else:
                p_m = max(p - clip, 0.0)
                total += -(p_m**gamma_neg) * math.log(max(1 - p_m, eps))
    return total


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


@pytest.mark.parametrize("weights,smoothing", [(None, 0.0), (WEIGHTS, 0.0), (None, 0.1), (WEIGHTS, 0.2)])
def test_cross_entropy_hand_and_torch(weights, smoothing):
    loss = CrossEntropyLoss(weights, smoothing)(t(LOGITS), t(CLASSES, torch.int64))
    assert loss.item() == pytest.approx(hand_ce(LOGITS, CLASSES, weights, smoothing), rel=1e-6)
    ref = F.cross_entropy(
        t(LOGITS), t(CLASSES, torch.int64), weight=None if weights is None else t(weights), label_smoothing=smoothing
    )
    assert torch.equal(loss, ref)


def test_bce_hand_and_torch():
    pw = [3.0, 1.0, 0.5]
    for pos_weight in (None, pw):
        loss = BCEWithLogitsLoss(pos_weight)(t(LOGITS), t(MULTI))
        assert loss.item() == pytest.approx(hand_bce(LOGITS, MULTI, pos_weight), rel=1e-6)


def test_softmax_focal_hand_and_gamma0_is_ce():
    gamma, alpha = 2.0, WEIGHTS
    expect = 0.0
    for row, c in zip(LOGITS, CLASSES):
        p = math.exp(log_softmax_row(row)[c])
        expect += -alpha[c] * (1 - p) ** gamma * math.log(p)
    loss = SoftmaxFocalLoss(gamma, alpha)(t(LOGITS), t(CLASSES, torch.int64))
    assert loss.item() == pytest.approx(expect / 3, rel=1e-6)
    ce = F.cross_entropy(t(LOGITS), t(CLASSES, torch.int64))
    assert SoftmaxFocalLoss(0.0)(t(LOGITS), t(CLASSES, torch.int64)).item() == pytest.approx(ce.item(), rel=1e-6)


def test_sigmoid_focal_hand_and_gamma0_is_bce():
    gamma, alpha = 1.5, 0.25
    expect = 0.0
    for row, trow in zip(LOGITS, MULTI):
        for x, y in zip(row, trow):
            p_t = sigmoid(x) if y == 1 else 1 - sigmoid(x)
            a_t = alpha if y == 1 else 1 - alpha
            expect += -a_t * (1 - p_t) ** gamma * math.log(p_t)
    loss = SigmoidFocalLoss(gamma, alpha)(t(LOGITS), t(MULTI))
    assert loss.item() == pytest.approx(expect / 9, rel=1e-6)
    bce = F.binary_cross_entropy_with_logits(t(LOGITS), t(MULTI))
    assert SigmoidFocalLoss(0.0)(t(LOGITS), t(MULTI)).item() == pytest.approx(bce.item(), rel=1e-6)


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4.0, 1.0, 0.05), (2.0, 0.0, 0.2), (4.0, 1.0, 0.0)])
def test_asl_hand(gamma_neg, gamma_pos, clip):
    # logit -3.5 gives p < clip=0.05/0.2: a fully discarded easy negative.
    logits = [row + [-3.5] for row in LOGITS]
    targets = [row + [0.0] for row in MULTI]
    loss = AsymmetricLoss(gamma_neg, gamma_pos, clip)(t(logits), t(targets))
    assert loss.item() == pytest.approx(hand_asl(logits, targets, gamma_neg, gamma_pos, clip), rel=1e-6)
    mean = AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction="mean")(t(logits), t(targets))
    assert mean.item() == pytest.approx(loss.item() / 3, rel=1e-6)


def test_asl_gamma0_clip0_is_summed_bce():
    x = torch.randn(6, 5) * 3
    y = (torch.rand(6, 5) > 0.5).float()
    asl = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0)(x, y)
    ref = F.binary_cross_entropy_with_logits(x, y, reduction="sum")
    assert asl.item() == pytest.approx(ref.item(), rel=1e-5)


def test_asl_gradient_detached_weight_by_hand():
    """With the weight detached, d/dx of -w log p is -w (1-p) for a positive and w p (1-p) / p_neg for a
    negative whose shifted probability is below 1 (and 0 once clipped); global grad mode stays on."""
    gamma_neg, gamma_pos, clip = 4.0, 1.0, 0.05
    x = t([[0.3, -0.7, 1.2, -4.0]]).requires_grad_()
    y = [1.0, 0.0, 0.0, 0.0]
    AsymmetricLoss(gamma_neg, gamma_pos, clip)(x, t([y])).backward()
    assert torch.is_grad_enabled()
    for j, (xj, yj) in enumerate(zip(x.detach()[0].tolist(), y)):
        p = sigmoid(xj)
        if yj == 1:
            expect = -((1 - p) ** gamma_pos) * (1 - p)
        elif p > clip:
            p_m = p - clip
            expect = p_m**gamma_neg * p * (1 - p) / (1 - p_m)
        else:
            expect = 0.0
        assert x.grad[0, j].item() == pytest.approx(expect, rel=1e-5, abs=1e-9)
    # Not detaching changes the gradient (the weight then carries one too).
    x2 = x.detach().clone().requires_grad_()
    AsymmetricLoss(gamma_neg, gamma_pos, clip, detach_focus=False)(x2, t([y])).backward()
    assert not torch.allclose(x2.grad, x.grad)


def test_gradients_finite_on_extreme_logits():
    x = t([[40.0, -40.0, 0.0], [-30.0, 25.0, 3.0]])
    y_multi = t([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    y_single = t([1, 0], torch.int64)
    modules = [
        (CrossEntropyLoss(WEIGHTS, 0.1), y_single),
        (SoftmaxFocalLoss(2.0), y_single),
        (BCEWithLogitsLoss([2.0, 1.0, 1.0]), y_multi),
        (SigmoidFocalLoss(2.0, 0.25), y_multi),
        (AsymmetricLoss(), y_multi),
        (AsymmetricLoss(detach_focus=False), y_multi),
    ]
    for module, y in modules:
        xi = x.clone().requires_grad_()
        loss = module(xi, y)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(xi.grad).all(), type(module).__name__


def test_half_precision_logits_computed_in_fp32():
    x = t(LOGITS).to(torch.bfloat16)
    loss = CrossEntropyLoss()(x, t(CLASSES, torch.int64))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(F.cross_entropy(x.float(), t(CLASSES, torch.int64)).item())


def test_combined_loss_is_weighted_sum():
    x, y = t(LOGITS), t(MULTI)
    combined = CombinedLoss([(BCEWithLogitsLoss(), 0.3), (AsymmetricLoss(), 0.7)])
    expect = 0.3 * hand_bce(LOGITS, MULTI) + 0.7 * hand_asl(LOGITS, MULTI, 4.0, 1.0, 0.05)
    assert combined(x, y).item() == pytest.approx(expect, rel=1e-6)


def test_parse_loss_spec():
    assert parse_loss_spec("ce") == [("ce", 1.0)]
    assert parse_loss_spec("bce+asl") == [("bce", 0.5), ("asl", 0.5)]
    assert parse_loss_spec(" BCE:0.25 + asl:0.75 ") == [("bce", 0.25), ("asl", 0.75)]
    for bad in ("xent", "bce+", "bce:x+asl:1", "bce:0.5+asl", "bce:-1", ""):
        with pytest.raises(ConfigError, match="^loss"):
            parse_loss_spec(bad)


def test_build_loss_defaults_and_kinds():
    assert isinstance(build_loss("", "single_label", 3), CrossEntropyLoss)
    assert isinstance(build_loss("", "multiple-choice", 5), CrossEntropyLoss)
    assert isinstance(build_loss("", "multi_label", 11), BCEWithLogitsLoss)
    assert isinstance(build_loss("focal", "multi_label", 11), SigmoidFocalLoss)
    assert isinstance(build_loss("focal", "single_label", 3), SoftmaxFocalLoss)
    asl = build_loss("asl", "multi_label", 11)
    assert isinstance(asl, AsymmetricLoss) and asl.reduction == "mean"
    assert (asl.gamma_neg, asl.gamma_pos, asl.clip) == (4.0, 1.0, 0.05)
    combo = build_loss("bce:0.5+asl:0.5", "multi_label", 3, pos_weight=[1.0, 2.0, 3.0])
    assert isinstance(combo, CombinedLoss) and combo.weights == [0.5, 0.5]
    x, y = t(LOGITS), t(MULTI)
    # pos_weight reaches every multi-label term: BCE's by hand, ASL's as its per-element loss times the weight
    asl_weighted = AsymmetricLoss(reduction="none", pos_weight=t([1.0, 2.0, 3.0]))(t(LOGITS), t(MULTI)).sum().item()
    expect = 0.5 * hand_bce(LOGITS, MULTI, [1.0, 2.0, 3.0]) + 0.5 * asl_weighted / 3
    assert combo(x, y).item() == pytest.approx(expect, rel=1e-6)
    ce = build_loss("ce", "single_label", 3, class_weights=WEIGHTS, label_smoothing=0.1)
    assert ce(x, t(CLASSES, torch.int64)).item() == pytest.approx(hand_ce(LOGITS, CLASSES, WEIGHTS, 0.1), rel=1e-6)


def test_build_loss_errors():
    with pytest.raises(ConfigError, match=r"^loss.*ce, bce, focal, asl"):
        build_loss("dice", "multi_label", 3)
    with pytest.raises(ConfigError, match="^loss ce"):
        build_loss("ce", "multi_label", 3)
    with pytest.raises(ConfigError, match="^loss asl"):
        build_loss("asl", "single_label", 3)
    with pytest.raises(ConfigError, match="pos_weight applies to multi-label bce, focal or asl"):
        build_loss("ce", "single_label", 3, pos_weight=[1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="^class_weights apply"):
        build_loss("bce", "multi_label", 3, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="^label_smoothing"):
        build_loss("focal", "single_label", 3, label_smoothing=0.1)
    with pytest.raises(ConfigError, match=r"^class_weights has shape.*\(3\)"):
        build_loss("ce", "single_label", 3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="kind"):
        build_loss("ce", "regression", 3)
    with pytest.raises(ConfigError) as info:
        build_loss("bce:0.5+foo", "multi_label", 3)
    assert "\n" not in str(info.value) and "'foo'" in str(info.value)


def test_balanced_class_weights_by_hand():
    labels = [0, 0, 0, 1, 2, 2]  # n=6, C=4, class 3 absent
    w = balanced_class_weights(labels, 4)
    assert w.tolist() == pytest.approx([6 / (4 * 3), 6 / (4 * 1), 6 / (4 * 2), 1.0])
    with pytest.raises(ValueError):
        balanced_class_weights([0, 5], 3)


def test_balanced_pos_weight_real_semeval(data_dir):
    rows = (data_dir / "semeval2018_ec" / "2018-E-c-En-train.txt").read_text(encoding="utf-8").splitlines()[1:]
    y = np.array([[int(v) for v in line.split("\t")[2:]] for line in rows])
    w = balanced_pos_weight(y)
    # PROVENANCE.md: anger has 2544 positives of 6838 train tweets.
    assert w[0].item() == pytest.approx((6838 - 2544) / 2544, rel=1e-6)
    edge = balanced_pos_weight(np.array([[0, 1, 1], [0, 0, 1]]))
    assert edge.tolist() == [1.0, 1.0, 1.0]  # no positives; 1 vs 1; no negatives


def test_pos_weight_in_focal_and_asl_weighs_positives_as_bce_does():
    """The GoEmotions recipe's class weights on its ASL + focal mix: with gamma 0 (and clip 0) both are exactly
    torch's BCE with that pos_weight; with focusing on, only the positive elements are scaled."""
    pw = t([3.0, 1.0, 0.5])
    x, y = t(LOGITS), t(MULTI)
    bce = F.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none")
    assert torch.allclose(SigmoidFocalLoss(0.0, pos_weight=pw)(x, y), bce.mean(), rtol=1e-6, atol=0)
    asl0 = AsymmetricLoss(0.0, 0.0, clip=0.0, reduction="none", pos_weight=pw)
    assert torch.allclose(asl0(x, y), bce, rtol=1e-5, atol=1e-7)
    plain, weighted = AsymmetricLoss(reduction="none"), AsymmetricLoss(reduction="none", pos_weight=pw)
    assert torch.equal(weighted(x, y), plain(x, y) * (1 + (pw - 1) * y))
    combo = build_loss("asl:0.5+focal:0.5", "multi_label", 3, pos_weight=pw)
    expect = 0.5 * weighted(x, y).sum() / len(x) + 0.5 * SigmoidFocalLoss(2.0, pos_weight=pw)(x, y)
    assert combo(x, y).item() == pytest.approx(expect.item(), rel=1e-6)


def test_distill_loss_single_label_equals_hand_kl_times_t_squared_plus_task_loss():
    from minitune.train.distill_loss import DistillLoss, with_soft_targets

    teacher = [[0.7, 0.2, 0.1], [0.05, 0.05, 0.9], [0.3, 0.4, 0.3]]
    alpha, t = 0.3, 2.5
    targets = torch.tensor([with_soft_targets(c, p) for c, p in zip(CLASSES, teacher)])
    got = DistillLoss(CrossEntropyLoss(), False, alpha, t)(torch.tensor(LOGITS), targets)
    kl = 0.0  # element by element: KL(softened teacher || softened student), mean over the batch
    for z, p in zip(LOGITS, teacher):
        soft_t = [math.exp(math.log(v) / t) for v in p]
        soft_t = [v / sum(soft_t) for v in soft_t]
        log_s = [v / t - math.log(sum(math.exp(u / t) for u in z)) for v in z]
        kl += sum(q * (math.log(q) - s) for q, s in zip(soft_t, log_s)) / len(LOGITS)
    ce = float(F.cross_entropy(torch.tensor(LOGITS), torch.tensor(CLASSES)))
    assert float(got) == pytest.approx(alpha * kl * t * t + (1 - alpha) * ce, rel=1e-6)
    # alpha 0 is the task loss alone, alpha 1 the teacher term alone.
    assert float(DistillLoss(CrossEntropyLoss(), False, 0.0, t)(torch.tensor(LOGITS), targets)) == pytest.approx(ce)


def test_distill_loss_multi_label_is_binary_kl_with_the_gradient_of_soft_bce():
    from minitune.train.distill_loss import DistillLoss, with_soft_targets

    teacher = [[0.9, 0.1, 0.6], [0.2, 0.0, 1.0], [0.5, 0.7, 0.3]]
    targets = torch.tensor([with_soft_targets(g, p) for g, p in zip(MULTI, teacher)])
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = DistillLoss(BCEWithLogitsLoss(), True, 1.0, 4.0)(logits, targets)
    hand = 0.0  # sum over elements of p log(p/q) + (1-p) log((1-p)/(1-q)), then the mean
    for z_row, p_row in zip(LOGITS, teacher):
        for z, p in zip(z_row, p_row):
            q = 1 / (1 + math.exp(-z))
            hand += (p * math.log(p / q) if p else 0.0) + ((1 - p) * math.log((1 - p) / (1 - q)) if p < 1 else 0.0)
    assert float(loss) == pytest.approx(hand / 9, rel=1e-6)
    loss.backward()
    ref = torch.tensor(LOGITS, requires_grad=True)
    F.binary_cross_entropy_with_logits(ref, torch.tensor(teacher)).backward()
    torch.testing.assert_close(logits.grad, ref.grad)
    # A teacher that is the student itself: nothing left to learn from it.
    same = torch.sigmoid(torch.tensor(LOGITS))
    zero = DistillLoss(BCEWithLogitsLoss(), True, 1.0, 1.0).soft_loss(torch.tensor(LOGITS), same)
    assert abs(float(zero)) < 1e-6


def test_distill_arguments_are_checked():
    from minitune.train.distill_loss import DistillLoss

    with pytest.raises(ConfigError, match="distill_alpha.? must be in"):
        DistillLoss(CrossEntropyLoss(), False, 1.5, 2.0)
    with pytest.raises(ConfigError, match="temperature.? must be positive"):
        DistillLoss(CrossEntropyLoss(), False, 0.5, 0.0)
