"""Models: where they come from (sources), loading them (loading), weights files, exported
programs, weights from the network (remote), the embedded EfficientNet-Lite0 and the
pruned-checkpoint format (pruned).

`core.models.load_model` and the other names below resolve on first use, so that importing
core.models.sources (CLI --help, the window's first paint) does not import torch.
"""
import importlib

_EXPORTS = {"load_model": "loading", "list_models": "loading", "from_module": "loading",
            "LoadedModel": "loading"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core.models' has no attribute '{name}'")
    return getattr(importlib.import_module(f"core.models.{_EXPORTS[name]}"), name)
