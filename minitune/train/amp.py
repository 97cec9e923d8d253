"""Mixed precision: which autocast to run under, `precision` auto's choice, and a dynamic loss scaler for fp16.

- `precision` auto (the default) is bf16 autocast where the hardware multiplies bf16 natively, fp32 elsewhere:
  a CPU whose flags name a bf16 instruction set (AVX512_BF16, AMX-BF16; oneDNN runs bf16 matmuls through them,
  about 2.2x fp32 per thread at MiniLM's shapes, benchmarks/roofline.py), or a CUDA device of compute capability 8.0
  (Ampere) or later. Without them torch emulates bf16 products, not expected to beat fp32 (unmeasured here), so
  auto keeps fp32. fp16 is never chosen: it needs a loss scaler and its range can overflow.

- Autocast (torch.autocast) runs matmuls in bf16/fp16 while the parameters, optimizer state and loss stay fp32.
  bf16 keeps fp32's exponent range and needs no loss scaling; fp16 does.
- Dynamic loss scaling (Micikevicius et al., 2018, "Mixed Precision Training"): multiply the loss by S so small
  fp16 gradients do not flush to zero, divide the gradients by S before the update, skip the update and halve S
  when any gradient overflowed, double S after `growth_interval` clean steps. The scale trajectory and the
  unscaled gradients must equal torch.amp.GradScaler's (tests/test_amp.py runs both side by side); the scale is
  kept as float32 like GradScaler's, so non-power-of-two factors round the same way.

How the loop uses it (any precision; disabled, the scaler only guards against non-finite gradients):
    scaler.scale(loss).backward()            # per micro-batch
    found_inf = scaler.unscale_(optimizer)   # once per optimizer step, before clipping
    clip_grad_norm_(...)                     # sees true gradients
    applied = scaler.step(optimizer)         # False: skipped; do not advance the lr schedule
    scaler.update()
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import numpy as np
import torch

from minitune.errors import CheckpointError, ParameterError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# CPU flags (as /proc/cpuinfo spells them) that mean bf16 matmuls in hardware.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str | torch.device, flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """(whether `device` multiplies bf16 natively, why), reading the CPU's `flags` (default: this machine's) or the
    CUDA device's compute capability."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible"
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return True, f"{name} (compute capability {major}.{minor}) has bf16 tensor cores"
        return False, f"{name} (compute capability {major}.{minor}) has no bf16 tensor cores (8.0 or later)"
    if device.type != "cpu":
        return False, f"auto picks bf16 on CPUs and CUDA only, not on {device.type}"
    flags = cpu_flags() if flags is None else flags
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    if found:
        return True, f"this CPU computes bf16 natively ({', '.join(found)})"
    return False, f"this CPU has no native bf16 ({' or '.join(BF16_CPU_FLAGS)} not among its flags)"


def choose_precision(
    precision: str, device: str | torch.device, flags: frozenset[str] | None = None
) -> tuple[str, str]:
    """(the precision a run uses, why): `precision` as set, or for auto bf16 where `native_bf16` and fp32 elsewhere."""
    if precision != "auto":
        return precision, "set by `precision`"
    native, why = native_bf16(device, flags)
    return ("bf16", f"auto: {why}") if native else ("fp32", f"auto: {why}")


def _device_type(device: str | torch.device) -> str:
    return torch.device(device).type


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The autocast dtype for `precision` on this device (auto: `choose_precision`'s; a run resolves it once, in
    inputs.prepare, and saves it), or a ParameterError saying what to use instead."""
    if precision == "auto":
        precision = choose_precision(precision, device)[0]
    if precision not in PRECISIONS:
        raise ParameterError(
            f"`precision` {precision!r} is not a precision: use auto or one of {', '.join(PRECISIONS)}"
        )
    dtype = PRECISIONS[precision]
    device_type = _device_type(device)
    if dtype == torch.float32:
        return dtype
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(
                f"`precision` {precision} asks for CUDA autocast but no GPU is visible: use `device` cpu"
            )
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ParameterError("`precision` bf16 is not supported by this GPU: use `precision` fp16")
        return dtype
    # torch disables autocast with a warning (not an error) for dtypes a backend lacks; turn that into an error.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast(device_type=device_type, dtype=dtype)
        except RuntimeError as err:
            raise ParameterError(f"`precision` {precision} on {device_type}: {err}; use `precision` fp32") from err
    if any("not supported" in str(w.message) for w in caught):
        raise ParameterError(
            f"`precision` {precision} is not supported by {device_type} autocast in torch {torch.__version__}:"
            " use `precision` bf16 or fp32"
        )
    return dtype


def autocast_context(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for bf16/fp16, a do-nothing context for fp32."""
    dtype = resolve_precision(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device_type(device), dtype=dtype)


def _fp32(x: float) -> float:
    """Round to float32, as GradScaler stores its scale (overflow gives inf, which update() refuses)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


class DynamicLossScaler:
    """Loss scaling with overflow detection; disabled it keeps the interface and the non-finite guard."""

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError("need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1")
        self.enabled = enabled
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self._scale = _fp32(init_scale) if enabled else 1.0
        self._growth_tracker = 0
        # Per optimizer (by id) for the current iteration: found_inf, and whether step() already ran.
        self._found_inf: dict[int, bool] = {}
        self._stepped: set[int] = set()

    def get_scale(self) -> float:
        return self._scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale if self.enabled else loss

    @staticmethod
    def _grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]

    @staticmethod
    def _any_non_finite(grads: list[torch.Tensor]) -> bool:
        if not grads:
            return False
        # Max-abs per tensor (what clip_grad_norm_ uses internally): inf for any inf, NaN for any NaN.
        peaks = torch._foreach_norm(grads, ord=math.inf)
        device = peaks[0].device
        return not bool(torch.stack([p.float().to(device) for p in peaks]).isfinite().all())

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide this optimizer's gradients by the scale in place; True when any gradient is inf or NaN."""
        key = id(optimizer)
        if key in self._found_inf:
            raise RuntimeError("unscale_() was already called for this optimizer since the last update()")
        grads = self._grads(optimizer)
        if self.enabled and grads:
            torch._foreach_mul_(grads, 1.0 / self._scale)
        found_inf = self._any_non_finite(grads)
        self._found_inf[key] = found_inf
        return found_inf

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """optimizer.step() unless a gradient is non-finite; returns whether the update was applied."""
        key = id(optimizer)
        if key in self._stepped:
            raise RuntimeError("step() was already called for this optimizer since the last update()")
        if key not in self._found_inf:
            self.unscale_(optimizer)
        self._stepped.add(key)
        if self._found_inf[key]:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Back off after an overflow, grow after growth_interval clean iterations; ends the iteration."""
        if not self._found_inf:
            raise RuntimeError("update() needs unscale_() or step() first in this iteration")
        found_inf = any(self._found_inf.values())
        self._found_inf.clear()
        self._stepped.clear()
        if not self.enabled:
            return
        if found_inf:
            self._scale = _fp32(self._scale * self.backoff_factor)
            self._growth_tracker = 0
            return
        self._growth_tracker += 1
        if self._growth_tracker == self.growth_interval:
            grown = _fp32(self._scale * self.growth_factor)
            if math.isfinite(grown):  # at the float32 ceiling the scale stays put
                self._scale = grown
            self._growth_tracker = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "scale": self._scale,
            "growth_tracker": self._growth_tracker,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved scaler; a state saved without scaling (fp32/bf16) leaves a fresh fp16 scale in place."""
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise CheckpointError(
                f"loss-scaler state lacks {', '.join(missing)}: the checkpoint is corrupt or not from minitune;"
                " resume from another checkpoint or start fresh"
            )
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        if self.enabled and state["enabled"]:
            self._scale = _fp32(state["scale"])
            self._growth_tracker = int(state["growth_tracker"])
