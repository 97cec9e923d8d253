"""One seed for every random number generator a run draws from (python, numpy, torch), set before anything random
happens: the model's fresh head and adapters, dropout, and the samplers, which draw from their own seeded generators."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
