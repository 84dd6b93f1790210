"""Every perturbed input of one image, from every metric of every method, through the model in
shared batches on its device.

A metric queues its inputs as a recipe (a function that builds rows [start, stop) on the device)
and reads its outputs after run(): so a batch may hold the rows of several metrics and methods,
perturbed inputs are built a batch at a time (what cannot be, ROAD's imputations, is queued
built), and the outputs leave the device once, at the end.
"""
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from core.pathway.curves import default_batch

Build = Callable[[int, int], torch.Tensor]
CUDA_MEMORY_SHARE = 0.4  # of the free device memory that one batch's forward may take


@dataclass
class _Group:
    stage: str
    count: int
    build: Build
    start: int


@dataclass
class Outputs:
    """The target's softmax probability and logit for each queued row, in queue order."""
    probs: np.ndarray
    logits: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)  # forward time, shared out by rows


class Forwards:
    def __init__(self, module: torch.nn.Module, target: int, batch: int | None = None):
        self.module, self.target, self.batch = module, target, batch
        self._groups: list[_Group] = []
        self.count = 0

    def queue(self, stage: str, count: int, build: Build) -> slice:
        """Rows whose outputs will be at the returned slice of Outputs; `stage` names the metric
        (its share of the forward time is reported under that name)."""
        self._groups.append(_Group(stage, count, build, self.count))
        self.count += count
        return slice(self.count - count, self.count)

    def queue_tensor(self, stage: str, inputs: torch.Tensor) -> slice:
        return self.queue(stage, len(inputs), lambda start, stop: inputs[start:stop])

    def run(self, example: torch.Tensor) -> Outputs:
        """example: one input (1 x C x H x W), for sizing the batches to the device's memory."""
        batch = self.batch or batch_size(self.module, example)
        probs, logits, seconds = [], [], {}
        with torch.no_grad():
            for start in range(0, self.count, batch):
                stop = min(start + batch, self.count)
                began = time.perf_counter()
                rows = [(g, max(start, g.start), min(stop, g.start + g.count)) for g in self._groups
                        if g.start < stop and g.start + g.count > start]
                out = self.module(torch.cat([g.build(a - g.start, b - g.start) for g, a, b in rows])).float()
                probs.append(torch.softmax(out, dim=1)[:, self.target])
                logits.append(out[:, self.target])
                if out.is_cuda:  # else the clock would stop at the kernels' launch
                    torch.cuda.synchronize(out.device)
                spent = time.perf_counter() - began
                for g, a, b in rows:
                    seconds[g.stage] = seconds.get(g.stage, 0.0) + spent * (b - a) / (stop - start)
        if not probs:
            return Outputs(np.zeros(0), np.zeros(0), seconds)
        return Outputs(torch.cat(probs).double().cpu().numpy(), torch.cat(logits).double().cpu().numpy(),
                       seconds)


_PROBED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def batch_size(module: torch.nn.Module, example: torch.Tensor) -> int:
    """Inputs per forward: on a GPU as many as a share of its free memory holds (measured from one
    input's peak, once per model and input shape), elsewhere the CPU's best
    (core.pathway.curves.default_batch)."""
    device = example.device
    if device.type != "cuda":
        return default_batch(device)
    known = _PROBED.setdefault(module, {})
    key = (tuple(example.shape), example.dtype, device)
    if key not in known:
        known[key] = _probe(module, example)
    return known[key]


def _probe(module: torch.nn.Module, example: torch.Tensor) -> int:
    device = example.device
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        module(example)
    per_input = max(torch.cuda.max_memory_allocated(device) - before, 1)
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(max(1, min(1024, CUDA_MEMORY_SHARE * free // per_input)))
