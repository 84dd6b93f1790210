"""A class's pathway as a model: keep the channels its images' pathways run through, remove the rest.

Input-specific pruning taken to a class (the dynamic pruning of "explainable deep pruning"): from a
`pathways` run, each graph layer keeps the channels that carry `coverage` of the class's kept score
(core.evaluation.pathways' `mean_share`, largest first); the channels left out are removed
physically, with Torch-Pruning as `prune` does, together with what they couple with. Layers outside
the graphs stay whole. The pruned model's agreement with the original is measured on the class's
images and on the other classes'.
"""
import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import PruneScopeError
from core.model_pruning import surgery
from core.model_pruning.criteria import activation_producers
from core.model_pruning.measures import ModelStats, measure_pair, predict
from core.model_pruning.names import DEFAULT_COVERAGE
from core.progress import Job, Progress


@dataclass
class ClassPathwayReport:
    model: object                    # core.models.loading.LoadedModel holding the pruned module
    class_name: str
    coverage: float
    surgery: surgery.Surgery
    before: ModelStats
    after: ModelStats
    kept: dict                       # graph layer -> (channels kept, channels)
    agreement_own: float             # top-1 agreement with the original on the class's images
    agreement_others: float | None   # ... and on the other classes' images
    own_images: int
    other_images: int

    def summary(self) -> dict:
        return {"class_pathway": self.class_name, "coverage": self.coverage,
                "before": dataclasses.asdict(self.before), "after": dataclasses.asdict(self.after),
                "kept": {k: list(v) for k, v in self.kept.items()}, "agreement_own_class": self.agreement_own,
                "agreement_other_classes": self.agreement_others, "own_images": self.own_images,
                "other_images": self.other_images, "skipped": self.surgery.skipped}


def kept_channels(mean_share, coverage: float) -> list[int]:
    """The fewest channels, largest share first, whose shares add up to `coverage` of the layer's
    (at least one)."""
    share = np.asarray(mean_share, np.float64)
    order = np.argsort(-share, kind="stable")
    total = share.sum()
    if total <= 0:
        return [int(order[0])]
    count = int(np.searchsorted(np.cumsum(share[order]) / total, coverage - 1e-12) + 1)
    return sorted(int(c) for c in order[:max(1, count)])


def class_scores(model, summary: dict, class_name: str, x: torch.Tensor, coverage: float) -> tuple[dict, dict]:
    """(producer -> 0/1 score per output channel, graph layer -> (kept, channels)) for the class."""
    from core.network.neurons import discover_layers

    classes = summary.get("classes", {})
    if class_name not in classes:
        raise PruneScopeError(f"no class '{class_name}' in the pathways: choose from {', '.join(classes)}")
    if not 0.0 < coverage <= 1.0:
        raise PruneScopeError(f"coverage must be in (0, 100] percent, got {100 * coverage:g}")
    layers = discover_layers(model.module, x[:1])
    index = {layer.name: i for i, layer in enumerate(layers)}
    owner = activation_producers(model.module, x[:1])
    scores, kept = {}, {}
    for name, share in classes[class_name]["mean_share"].items():
        if name not in index or layers[index[name]].shape[0] != len(share):
            raise PruneScopeError(f"the pathways' layer '{name}' is not in {model.name} as it was: "
                                  "were they computed with another model?")
        producer = owner[index[name]]
        if producer is None:
            continue  # no convolution's output: nothing to remove there
        keep = kept_channels(share, coverage)
        scores[producer] = torch.zeros(len(share)).index_fill_(0, torch.tensor(keep), 1.0)
        kept[name] = (len(keep), len(share))
    return scores, kept


def prune_class_pathway(model, summary: dict, class_name: str, own: torch.Tensor, others: torch.Tensor | None,
                        coverage: float = DEFAULT_COVERAGE) -> Job[ClassPathwayReport]:
    """The class's pathway as a pruned copy of model; own / others: the class's images and the
    other classes' (N x C x S x S, preprocessed), to measure agreement on."""
    yield Progress(0.0, f"the pathway of {class_name}")
    scores, kept = class_scores(model, summary, class_name, own, coverage)
    module = copy.deepcopy(model.module)
    done = surgery.prune_unscored(module, own[:1], scores)
    yield Progress(0.6, "measuring")
    before, after = measure_pair(model.module, module, own)
    agree_own = float((predict(module, own) == predict(model.module, own)).float().mean())
    agree_others = None
    if others is not None and len(others):
        agree_others = float((predict(module, others) == predict(model.module, others)).float().mean())
    pruned = dataclasses.replace(model, module=module)
    yield Progress(1.0, "pruned")
    return ClassPathwayReport(pruned, class_name, coverage, done, before, after, kept, agree_own, agree_others,
                              len(own), 0 if others is None else len(others))
