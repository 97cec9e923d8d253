"""Text generation with a decoder: prefill the prompt once, then one token per step over a KV cache.

Reference: transformers' `GenerationMixin.generate` (greedy search and multinomial sampling with temperature and
top-p). What must match it (tests/test_generate.py): prompts are left-padded; position ids count real tokens
(cumsum(mask) - 1, pads at 0) and go on by one per step; the mask grows by a 1 per step for every row; a finished
row keeps receiving the pad token, so the greedy tokens equal the reference's token for token. Logits computed
with the cache equal those of a full forward pass over the same tokens.

A `logits_processor(logits, rows)` may change each step's next-token logits (B, V) before the choice: constrained
decoding (models/constrained.py) masks every token outside a label trie that way.

The KV cache (`LayerKV`, `KVCache`) lives here, with its users (this file and models/constrained.py); the model
(models/decoder.py) reads it only through the `LayerCache` / `DecoderCache` protocols of models/attention.py, so it
never imports this file. Each layer appends its new keys and values (reference: transformers' `DynamicCache`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from minitune.errors import ParameterError


class LayerKV:
    """One layer's cached keys and values, (B, Hkv, S, D) each."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


class KVCache:
    """Every layer's keys and values so far: a prefill fills it, each decoding step appends one position."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerKV() for _ in range(n_layers)]

    def __len__(self) -> int:
        k = self.layers[0].k
        return 0 if k is None else k.shape[2]

    def take(self, rows: torch.Tensor) -> None:
        """Re-form the batch from these rows (repeated rows: one prompt shared by several continuations)."""
        for kv in self.layers:
            kv.k, kv.v = kv.k[rows], kv.v[rows]


@dataclass
class GenerationConfig:
    """How to choose tokens and when to stop. Greedy unless do_sample; eos_token_ids end a row, as does any of
    stop_strings appearing in its decoded new text (which needs `decode`)."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    eos_token_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    use_cache: bool = True
    pad_token_id: int = 0
    decode: Callable[[list[int]], str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ParameterError(f"`max_new_tokens` must be positive, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ParameterError(f"`temperature` must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ParameterError(f"`top_p` must be in (0, 1], got {self.top_p}")
        if self.stop_strings and self.decode is None:
            raise ParameterError("`stop_strings` need `decode` (the tokenizer's) to read the generated text")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> (B, T) ids and 1/0 mask, padded on the left so every row's next token is at the end."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), t, dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, t - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, t - len(p) :] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids counting real tokens only; pads get 0 (their output is never used)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (at least one); others -inf."""
    if top_p >= 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the more likely tokens
    drop_sorted = before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose(logits: torch.Tensor, gen: GenerationConfig, rng: torch.Generator | None) -> torch.Tensor:
    """(B, V) next-token logits -> (B,) tokens: argmax, or a sample after temperature and top-p."""
    if not gen.do_sample:
        return logits.argmax(-1)
    logits = top_p_filter(logits / gen.temperature, gen.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=rng)[:, 0]


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    gen: GenerationConfig,
    logits_processor: Callable[[torch.Tensor, list[list[int]]], torch.Tensor] | None = None,
) -> list[list[int]]:
    """The new tokens of each prompt (a row ends after its eos token, or at the token completing a stop string).

    `model` is a DecoderForCausalLM (any module with its forward signature). `logits_processor(logits, new)`
    sees the (B, V) fp32 logits and every row's new tokens so far, and returns the logits to choose from.
    """
    model.eval()
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, gen.pad_token_id, device)
    rng = None
    if gen.do_sample:
        rng = torch.Generator(device=device)
        rng.manual_seed(0 if gen.seed is None else gen.seed)
    cache = KVCache(model.cfg.num_hidden_layers) if gen.use_cache else None
    eos = torch.tensor(list(gen.eos_token_ids), dtype=torch.long, device=device)
    new: list[list[int]] = [[] for _ in prompts]
    running = torch.ones(len(prompts), dtype=torch.bool, device=device)
    step_ids, step_pos = ids, positions(mask)
    for _ in range(gen.max_new_tokens):
        if cache is None:  # the slow path (benchmarks): the whole sequence again at every step
            logits = model(ids, mask, positions(mask), keep_last=1)[:, -1]
        else:
            logits = model(step_ids, mask, step_pos, cache, keep_last=1)[:, -1]  # (B, V)
        if logits_processor is not None:
            logits = logits_processor(logits, new)
        token = choose(logits, gen, rng)
        token = torch.where(running, token, torch.full_like(token, gen.pad_token_id))
        for i in running.nonzero()[:, 0].tolist():
            new[i].append(int(token[i]))
        running &= ~torch.isin(token, eos)
        if gen.stop_strings:
            for i in running.nonzero()[:, 0].tolist():
                text = gen.decode(new[i])
                if any(s in text for s in gen.stop_strings):
                    running[i] = False
        if not bool(running.any()):
            break
        step_pos = (step_pos[:, -1:] + 1) if cache is not None else None
        step_ids = token[:, None]
        mask = torch.cat((mask, mask.new_ones(mask.shape[0], 1)), dim=1)
        ids = torch.cat((ids, step_ids), dim=1)
    return new
