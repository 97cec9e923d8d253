"""Comparing tensors at a tolerance scaled to their size.

Float rounding error grows with the values computed: a gradient of magnitude 70 summed over many tokens carries
rounding of about 70 x 1e-7 per operation, so a bare absolute tolerance such as 1e-5 fails on noise there.
Element-wise relative tolerance does not fix it either: a small entry of a large tensor (a bias gradient that
nearly cancels) inherits the rounding of the large terms it was summed from. So the absolute part of the
tolerance scales with the largest reference value:

    |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|      (element-wise)

On tensors of magnitude up to 1 this is the usual absolute tolerance; above it, atol reads as relative to the
tensor's largest entry. Failures print the key, max |diff|, max |expected| and the bound, so a failure says at
once whether it is rounding (a diff near the bound) or a real mismatch (a diff near the magnitude).

Tests import it as `from tolerance import assert_close_scaled` (pytest puts tests/ on sys.path).
"""

import torch


def assert_close_scaled(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    name: str = "",
) -> None:
    """torch.testing.assert_close with its absolute tolerance times max(1, max |expected|); `name` leads the message."""
    expected_abs = expected.detach().abs()
    scale = float(expected_abs.max()) if expected.numel() else 0.0
    bound = atol * max(1.0, scale)

    def message(default: str) -> str:
        diff = (actual.detach().double() - expected.detach().double()).abs()
        worst = float(diff.max()) if diff.numel() else 0.0
        return (
            f"{name or 'tensor'}: max |diff| {worst:.3g}, max |expected| {scale:.3g}, "
            f"allowed {bound:.3g} + {rtol:g} x |expected| element-wise (atol {atol:g} x max(1, max |expected|))"
            f"\n{default}"
        )

    torch.testing.assert_close(actual, expected, atol=bound, rtol=rtol, msg=message)
