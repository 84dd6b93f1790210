"""What the engine answers with: plain dataclasses, no torch work."""
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from core.pathway.curves import Curves


@dataclass
class Prediction:
    target: int
    name: str
    prob: float
    top5: list  # [(class id, name, probability)]


@dataclass
class PathwayResult:
    map: np.ndarray               # H x W, signed, raw
    sparsity: float               # % of neurons actually pruned (the paper's ties may prune more)
    output_change: float          # |p'_c - p_c| / p_c
    prob: float                   # p'_c, the pruned network's probability of the target
    kept: list                    # [(layer name, neurons kept, neurons)]
    factors: list = field(repr=False)  # 0/1 float tensors, one per layer, the layer's shape (1: kept)
    requested: float = 0.0        # the sparsity asked for

    @cached_property
    def masks(self) -> list[torch.Tensor]:
        """Bool tensors, one per layer, the layer's shape."""
        return [f.bool() for f in self.factors]


@dataclass
class AutoSparsity:
    sparsity: float               # the largest found whose output change is within tolerance
    output_change: float
    how: str                      # how it was searched, for the user


@dataclass
class MethodResult:
    method: str
    map: np.ndarray
    seconds: float
    curves: Curves | None = None
    pathway: PathwayResult | None = None
    lerf: np.ndarray | None = None   # output change after removing the least relevant 1..10 %
    morf: np.ndarray | None = None   # ... and the most relevant


@dataclass
class Analysis:
    prediction: Prediction
    results: dict                 # method -> MethodResult, in the order asked
    skipped: dict                 # method -> why it could not run on this model
    failed: dict = field(default_factory=dict)  # method -> why it failed (the others are kept)


@dataclass
class Sweep:
    sparsities: np.ndarray
    output_change: np.ndarray
    deletion_auc: np.ndarray
