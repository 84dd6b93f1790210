"""Hooks that live for one block only."""
import math
import threading
from contextlib import contextmanager

CHECKPOINTS = 16  # how often giving_way's forwards ask whether they are wanted elsewhere


@contextmanager
def hooked(handles):
    """Removes the hook handles when the block ends, however it ends: no hook outlives its call
    (pytorch-grad-cam's users met leaks from hooks left behind)."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def giving_way(module):
    """A block in which module's forwards end (core.progress.Paused) as soon as more urgent work
    waits: about CHECKPOINTS of its layers with weights (convolutions, linear layers), evenly spread,
    ask before they run. For a step that can be run again (a batch of perturbed inputs), so that a
    slider move waits for a few layers of it, not all."""
    from core.progress import pause_if_hurried

    owner = threading.get_ident()

    def ask(_module, _inputs):
        if threading.get_ident() == owner:  # not in a copy of the module a library run made meanwhile
            pause_if_hurried()

    weighted = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
    # a hook on every layer costs 5 % of a forward
    asking = weighted[::max(1, math.ceil(len(weighted) / CHECKPOINTS))]
    return hooked([layer.register_forward_pre_hook(ask) for layer in asking])
