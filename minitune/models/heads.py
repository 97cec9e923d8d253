"""What every family's classifier shares: the `Classifier` base (the Hub config it came from, its label names,
the switch to unpadded execution) and multiple-choice flattening, (B, C, T) -> (B*C, T) and back."""

from __future__ import annotations

import torch


def flatten_choices(input_ids, attention_mask, token_type_ids):
    """Multiple choice: (B, C, T) -> (B*C, T) so every choice is encoded as its own sequence."""
    if input_ids.dim() == 2:
        return input_ids, attention_mask, token_type_ids

    def flat(t):
        return None if t is None else t.reshape(-1, t.shape[-1])  # (B*C, T)

    return flat(input_ids), flat(attention_mask), flat(token_type_ids)


def unflatten_choices(logits: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    if len(input_shape) == 3:
        return logits.view(input_shape[0], input_shape[1])  # (B, C)
    return logits


def init_fresh(model: torch.nn.Module, key: str, t: torch.Tensor) -> None:
    """Initialise a weight the checkpoint does not carry, as the reference does: biases 0, norm scales 1, other
    weights N(0, initializer_range)."""
    module = model.get_submodule(key.rpartition(".")[0])
    if key.endswith("bias"):
        torch.nn.init.zeros_(t)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(t)
    else:
        torch.nn.init.normal_(t, mean=0.0, std=getattr(getattr(model, "cfg", None), "initializer_range", 0.02))


class Classifier(torch.nn.Module):
    """What every family's classifier shares: the Hub config it was built from and its label names, which
    checkpoints/save.py writes back in the Hub layout (models never import the saving code).

    Subclasses set `base_prefix` (the Hub's name for the bare model: "bert", "roberta", "distilbert", "model") and
    build a head whose parameters live outside that prefix. `load_model` fills `hf_config`, `label_names`, `task_head`,
    `head_trained` and `name_or_path` after loading.
    """

    base_prefix: str = ""
    # Head weights a base checkpoint's pretraining head shares by name (ModernBERT's MLM `head.`): taken from any
    # checkpoint that has them, as the reference does; the rest of the head starts fresh.
    pretrained_head: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.hf_config: dict = {}
        self.label_names: list[str] | None = None
        self.task_head = "sequence"  # or "multiple_choice"; `head` is a Hub weight name in ModernBERT

    def hub_config(self) -> dict:
        """What config.json must add for transformers' class to compute this model's head (most families: nothing)."""
        return {}

    def init_fresh_(self, key: str, t: torch.Tensor) -> None:
        init_fresh(self, key, t)

    def set_unpadded(self, flag: bool | float) -> None:
        """Run per-token layers on real tokens only: True always, False never, a float: when at least that share
        of the batch is padding."""
        share = {True: 0.0, False: 2.0}.get(flag, flag) if isinstance(flag, bool) else float(flag)
        for m in self.modules():
            if hasattr(m, "unpad_min_share"):
                m.unpad_min_share = share
