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
