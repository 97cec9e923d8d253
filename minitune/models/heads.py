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


class Classifier(torch.nn.Module):
    """What every family's classifier shares: the Hub config it was built from and its label names, which
    checkpoints/save.py writes back in the Hub layout (models never import the saving code).

    Subclasses set `base_prefix` (the Hub's name for the bare model: "bert", "roberta", "distilbert", "model") and
    build a head whose parameters live outside that prefix. `load_model` fills `hf_config`, `label_names`, `head`,
    `head_trained` and `name_or_path` after loading.
    """

    base_prefix: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.hf_config: dict = {}
        self.label_names: list[str] | None = None
        self.head = "sequence"

    def set_unpadded(self, flag: bool | float) -> None:
        """Run per-token layers on real tokens only: True always, False never, a float: when at least that share
        of the batch is padding."""
        share = {True: 0.0, False: 2.0}.get(flag, flag) if isinstance(flag, bool) else float(flag)
        for m in self.modules():
            if hasattr(m, "unpad_min_share"):
                m.unpad_min_share = share
