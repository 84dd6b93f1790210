"""Hooks that live for one block only."""
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

    def ask(_module, _inputs):
        pause_if_hurried()

    weighted = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
    asking = weighted[::max(1, len(weighted) // CHECKPOINTS)]  # a hook on every layer costs 5 % of a forward
    return hooked([layer.register_forward_pre_hook(ask) for layer in asking])
