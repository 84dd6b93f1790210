"""What pruning changed, in numbers: parameters, MACs, measured latency, and how the pruned model's
outputs agree with the original's (top-1 agreement, top-5 overlap, KL) and with labels."""
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

LATENCY_RUNS = 30


WARMUP_RUNS = 3


LATENCY_BUDGET_S = 4.0


BATCH = 16  # images per no-grad forward when predicting


def predict(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Top-1 class per image, on the CPU."""
    return logits(module, x).argmax(1)


@dataclass
class ModelStats:
    params: int        # parameters the model holds
    nonzero: int       # of which non-zero (differs after unstructured pruning)
    macs: int          # multiply-accumulates of one forward (tp.utils.count_ops_and_params)
    latency_ms: float  # fastest wall time of one batch-1 forward on the model's device


def count_ops(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward of x[:1], through Torch-Pruning's counter."""
    import torch_pruning as tp
    from torch_pruning.utils import op_counter

    # The counter matches layer types exactly, so subclasses (EfficientNet's SameConv2d) would
    # count as zero ops; map each subclass to its base type's counter, for this count only.
    # The mapping is Torch-Pruning's global, which it also replaces by {} after counting: the
    # caller's mapping, as it was, is put back.
    mapping = op_counter.CUSTOM_MODULES_MAPPING
    saved = dict(mapping)
    try:
        for m in module.modules():
            if type(m) not in op_counter.MODULES_MAPPING and type(m) not in mapping:
                for base in type(m).__mro__[1:]:
                    if base in op_counter.MODULES_MAPPING:
                        mapping[type(m)] = op_counter.MODULES_MAPPING[base]
                        break
        macs, params = tp.utils.count_ops_and_params(module, x[:1])
    finally:
        mapping.clear()
        mapping.update(saved)
        op_counter.CUSTOM_MODULES_MAPPING = mapping
    return int(macs), int(params)


def latencies_ms(modules: list[nn.Module], x: torch.Tensor, runs: int = LATENCY_RUNS,
                 budget_s: float = LATENCY_BUDGET_S) -> list[float]:
    """Milliseconds of one forward of x[:1] for each module: the fastest of its runs, since
    other processes only ever add time (as timeit advises). The modules run in turns, after
    WARMUP_RUNS warm-up runs each, so that load on a shared machine meets them alike; at most
    `runs` rounds, fewer (at least five) once `budget_s` seconds have passed."""
    x = x[:1]
    cuda = x.device.type == "cuda"
    times: list[list[float]] = [[] for _ in modules]
    with torch.inference_mode():
        for module in modules:
            for _ in range(WARMUP_RUNS):
                module(x)
        began = time.perf_counter()
        while len(times[0]) < runs and (len(times[0]) < 5 or time.perf_counter() - began < budget_s):
            for module, kept in zip(modules, times):
                if cuda:
                    torch.cuda.synchronize(x.device)
                start = time.perf_counter()
                module(x)
                if cuda:
                    torch.cuda.synchronize(x.device)
                kept.append((time.perf_counter() - start) * 1000.0)
    return [min(t) for t in times]


def measure(module: nn.Module, x: torch.Tensor) -> ModelStats:
    """Counts only; the latency (NaN here) is filled in by latencies_ms, in turns with the
    model it is compared with."""
    macs, params = count_ops(module, x)
    nonzero = sum(int(p.count_nonzero()) for p in module.parameters())
    return ModelStats(params, nonzero, macs, float("nan"))


def measure_pair(original: nn.Module, pruned: nn.Module, x: torch.Tensor,
                 timed: bool = True) -> tuple[ModelStats, ModelStats]:
    before, after = measure(original, x), measure(pruned, x)
    if timed:
        before.latency_ms, after.latency_ms = latencies_ms([original, pruned], x)
    return before, after


def agreement(module: nn.Module, calib) -> float:
    """Fraction of calibration images whose top-1 the module shares with the unpruned model."""
    return float((predict(module, calib.x) == calib.targets).float().mean())


def logits(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's outputs on x, BATCH images per forward, on the CPU."""
    with torch.no_grad():
        return torch.cat([module(x[start:start + BATCH]).float().cpu() for start in range(0, x.shape[0], BATCH)])


def fidelity(module: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """How closely `module` follows the original, whose logits on x are `reference`: top-5
    overlap (the share of the original's top 5 classes in the module's, mean over images; top
    k for a model of k < 5 classes) and KL(original || module) of the softmax outputs, mean over
    images."""
    ours = logits(module, x)
    k = min(5, reference.shape[1])
    top = [len(set(a.tolist()) & set(b.tolist())) / k
           for a, b in zip(reference.topk(k).indices, ours.topk(k).indices)]
    kl = nn.functional.kl_div(torch.log_softmax(ours.double(), 1), torch.log_softmax(reference.double(), 1),
                              log_target=True, reduction="batchmean")
    return {"top5_overlap": float(np.mean(top)), "kl": float(kl)}


def accuracy(module: nn.Module, calib) -> float | None:
    if calib.labels is None:
        return None
    return float((predict(module, calib.x) == torch.tensor(calib.labels)).float().mean())
