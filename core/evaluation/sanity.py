"""Cascading model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

The network's parameter blocks are re-initialised from the output down, cumulatively, on a copy of
the model; after each block every method's map is compared with its map on the trained model. A
method whose map survives the destruction of the weights does not explain the model.

Captum has no such check, and Quantus (not a dependency) randomises layer by layer without grouping
them into blocks or reporting progress, so the cascade is written here.
"""
import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from core.errors import PruneScopeError
from core.progress import Job, Progress, run
from core.runtime.device import seeded

MIN_BLOCKS = 10
INIT_STD = 0.02  # for parameters whose module has no reset_parameters (ViT's embeddings)
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass
class SanityResult:
    methods: list[str]
    target: int
    seed: int
    blocks: list[str]  # in the order they were randomised (output first)
    steps: list[int]   # 0 = trained model, k = the first k blocks randomised
    spearman: dict[str, list[float]] = field(default_factory=dict)  # of |map| vs step 0
    ssim: dict[str, list[float]] = field(default_factory=dict)      # of |map| / max vs step 0
    maps: dict[str, list[np.ndarray]] = field(default_factory=dict)  # raw maps at every step

    def to_json(self) -> dict:
        """Everything but the maps (the CLI writes them as a PNG grid)."""
        return {"methods": self.methods, "target": self.target, "seed": self.seed,
                "blocks": self.blocks, "steps": self.steps,
                "spearman": self.spearman, "ssim": self.ssim}


def _owners(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(grouping path, module) for every module that holds parameters of its own, in registration
    order. A leaf is named by its path; a container holding parameters itself (ViT's class token,
    position embedding) by its path plus the first parameter's name, so it groups on its own."""
    owners = []
    for path, sub in module.named_modules():
        own = [name for name, _ in sub.named_parameters(recurse=False)]
        if not own:
            continue
        has_children = next(sub.children(), None) is not None
        key = f"{path}.{own[0]}".lstrip(".") if has_children or not path else path
        owners.append((key, sub))
    return owners


def parameter_blocks(module: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Logical parameter blocks, input first, each (name, modules whose own parameters it holds).

    Rule: group the parameter-holding modules by the first d parts of their path, with d the
    smallest depth giving at least MIN_BLOCKS groups (else the deepest), in registration order,
    which is forward order for the models PruneScope loads; then a group made only of
    normalisation layers joins the group before it (a stem conv and its BN are one block).
    ResNet-18 -> conv1+bn1, layer1.0 ... layer4.1, fc; EfficientNet-Lite0 -> _conv_stem+_bn0,
    _blocks.0 ... _blocks.15, _conv_head+_bn1, _fc; ViT-B/16 -> one block per encoder layer."""
    owners = _owners(module)
    if not owners:
        raise PruneScopeError("the model has no parameters to randomise")
    deepest = max(key.count(".") + 1 for key, _ in owners)
    for depth in range(1, deepest + 1):
        groups: dict[str, list[nn.Module]] = {}
        for key, sub in owners:
            groups.setdefault(".".join(key.split(".")[:depth]), []).append(sub)
        if len(groups) >= MIN_BLOCKS:
            break
    blocks: list[tuple[str, list[nn.Module]]] = []
    for name, subs in groups.items():
        if blocks and all(isinstance(sub, NORM_TYPES) for sub in subs):
            prev_name, prev_subs = blocks[-1]
            blocks[-1] = (f"{prev_name}+{name}", prev_subs + subs)
        else:
            blocks.append((name, subs))
    return blocks


def _reinitialise(sub: nn.Module) -> None:
    """Fresh random values for the module's own parameters (BN: running statistics too)."""
    is_leaf = next(sub.children(), None) is None
    if is_leaf and hasattr(sub, "reset_parameters"):
        sub.reset_parameters()  # the module's own init; _NormBase also resets running stats
        return
    with torch.no_grad():
        for param in sub.parameters(recurse=False):
            param.normal_(0.0, INIT_STD)


def randomise_block(subs: list[nn.Module], seed: int) -> None:
    """Re-initialise the block's parameters reproducibly, leaving the caller's RNG state as it was."""
    with seeded(seed, next(subs[0].parameters()).device):
        for sub in subs:
            _reinitialise(sub)


def spearman_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of |a| and |b|; 0 when either is constant (no ranking to share),
    unless they are identical."""
    a, b = np.abs(np.asarray(a, np.float64)).ravel(), np.abs(np.asarray(b, np.float64)).ravel()
    if np.array_equal(a, b):
        return 1.0
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def ssim_abs(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of |a| and |b|, each scaled to [0, 1] by its maximum."""
    a, b = (_unit_abs(m) for m in (a, b))
    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


def _unit_abs(m: np.ndarray) -> np.ndarray:
    m = np.abs(np.asarray(m, np.float64))
    top = m.max()
    return m / top if top > 0 else m


def iter_cascading_randomization(module: nn.Module, x: torch.Tensor, target: int, methods,
                                 explain, seed: int = 0) -> "Job[SanityResult]":
    """Randomise parameter blocks from the output down, cumulatively, on a deep copy of `module`,
    and compare each method's map after every block with the map of the untouched model.

    explain(module, x, target, method) -> HxW map; it receives the (partly randomised) copy."""
    methods = list(methods)
    if not methods:
        raise PruneScopeError("no attribution methods to check")
    clone = copy.deepcopy(module).eval()
    blocks = list(reversed(parameter_blocks(clone)))
    total = (len(blocks) + 1) * len(methods)
    result = SanityResult(methods=methods, target=int(target), seed=seed,
                          blocks=[name for name, _ in blocks], steps=list(range(len(blocks) + 1)))
    done = 0
    for step in result.steps:
        if step:
            name, subs = blocks[step - 1]
            randomise_block(subs, seed * 100_003 + step)
        label = "trained model" if step == 0 else f"randomised down to {blocks[step - 1][0]}"
        for method in methods:
            attr = np.asarray(explain(clone, x, target, method), dtype=np.float32)
            maps = result.maps.setdefault(method, [])
            maps.append(attr)
            result.spearman.setdefault(method, []).append(spearman_abs(maps[0], attr))
            result.ssim.setdefault(method, []).append(ssim_abs(maps[0], attr))
            done += 1
            yield Progress(done / total, f"{label}: {method}")
    return result


def cascading_randomization(module, x, target, methods, explain, seed=0,
                            on_progress=None) -> SanityResult:
    return run(iter_cascading_randomization(module, x, target, methods, explain, seed), on_progress)
