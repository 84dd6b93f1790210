"""Hooks that live for one block only."""
from contextlib import contextmanager


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
    waits: each leaf module asks before it runs. For a step that can be run again (a batch of
    perturbed inputs), so that a slider move waits for no more of it than one layer."""
    from core.progress import pause_if_hurried

    def ask(_module, _inputs):
        pause_if_hurried()

    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    return hooked([leaf.register_forward_pre_hook(ask) for leaf in leaves])
