"""Whole-model pruning with explainability-aware criteria, and what it does to explanations.

criteria: channel scores (L1, Taylor, LRP, pathway frequency); surgery: removing channels with
Torch-Pruning, zeroing weights, export and load_pruned; pipeline: prune a loaded model and
measure it; sweep: accuracy, cost and explanation drift along a sparsity axis.
"""
from core.model_pruning.criteria import CRITERIA, DESCRIPTIONS, STRUCTURED, channel_scores
from core.model_pruning.pipeline import (Calibration, ModelStats, PruneReport, calibrate, finetune,
                                         measure, prune_copy, prune_model, save_pruned)
from core.model_pruning.surgery import MODES, PRUNED_KEY, Surgery, checkpoint, load_pruned

__all__ = ["CRITERIA", "DESCRIPTIONS", "STRUCTURED", "MODES", "PRUNED_KEY", "Calibration", "ModelStats",
           "PruneReport", "Surgery", "calibrate", "channel_scores", "checkpoint", "finetune",
           "load_pruned", "measure", "prune_copy", "prune_model", "save_pruned"]
