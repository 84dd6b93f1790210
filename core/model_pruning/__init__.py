"""Whole-model pruning with explainability-aware criteria, and what it does to explanations.

names: the choices (no torch); criteria: channel scores (L1, Taylor, LRP, pathway frequency);
surgery: removing channels with Torch-Pruning, zeroing weights, export and load_pruned;
pipeline: prune a loaded model (in steps), recover and measure it; recovery: the batch-norm
shift correction, distillation and the held-out split; sweep: accuracy, cost and explanation drift
along a sparsity axis.

Exports resolve on first use, so that importing core.model_pruning.names (CLI --help, the GUI)
does not import torch.
"""
import importlib

_EXPORTS = {
    "channel_scores": "criteria",
    "Recovery": "pipeline", "calibrate": "pipeline", "prune_copy": "pipeline", "prune_model": "pipeline",
    "save_pruned": "deploy",
    "checkpoint": "surgery", "load_pruned": "surgery",  # surgery re-exports core.models.pruned
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core.model_pruning' has no attribute '{name}'")
    return getattr(importlib.import_module(f"core.model_pruning.{_EXPORTS[name]}"), name)
