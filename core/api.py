"""PruneScope from Python: every attribution method as a Captum-style class, and an
`explain_func` for Quantus.

    from core.api import PathwayGradient, GradCamPlusPlus, explain_func
    maps = PathwayGradient(model).attribute(x, target=labels, sparsity=70)   # N x H x W
    plain = GradCamPlusPlus(model).attribute(x, target=labels)

`model` is a LoadedModel (core.models.loading.load_model) or any image classifier as an nn.Module
taking normalised N x C x H x W tensors; for a bare module, `mean` and `std` (ImageNet's by
default) say how its inputs were normalised (KernelSHAP and LIME segment the image, LRP bounds
it) and `gradcam_layer` names the CAMs' layer (else the last spatial one is found).
Every method of core.methods has a class here, named in CamelCase (`pathway-grad-cam++` is
`PathwayGradCamPlusPlus`), and `Attribution(model, "name")` takes any name.
"""
import re

import numpy as np
import torch
from torch import nn

from core.errors import PruneScopeError
from core.methods import ALL_METHODS, PATHWAY_METHODS, checked_settings
from core.models.loading import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, from_module
from core.pathway.engine import Engine


class Attribution:
    """One method, batched over inputs: attribute(x, target) -> N x H x W float32 tensor.
    settings: the method's, {key: value} (README's table; e.g. {"steps": 20})."""

    method = ""

    def __init__(self, model, method: str | None = None, *, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 gradcam_layer: str | None = None, settings: dict | None = None):
        self.method = method or self.method
        if self.method not in ALL_METHODS:
            raise PruneScopeError(f"unknown method '{self.method}': choose from {', '.join(ALL_METHODS)}")
        self.settings = checked_settings({self.method: settings} if settings else {})
        if not isinstance(model, (LoadedModel, nn.Module)):
            raise PruneScopeError(f"expected a LoadedModel or an nn.Module, got {type(model).__name__}")
        self._given, self._setup = model, {"mean": mean, "std": std, "gradcam_layer": gradcam_layer}
        self.model = model if isinstance(model, LoadedModel) else None  # a module: probed at its input size

    def attribute(self, inputs: torch.Tensor, target=None, sparsity: float = 70.0,
                  mode: str = "global", selector: str = "taylor") -> torch.Tensor:
        """inputs: N x C x H x W, normalised as the model expects; target: one class for all,
        one per input, or None for each input's predicted class. sparsity, mode, selector: the
        pathway's (ignored by plain methods)."""
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
            raise PruneScopeError(f"expected inputs as an N x C x H x W tensor, got "
                                  f"{getattr(inputs, 'shape', type(inputs).__name__)}")
        targets = _targets(target, len(inputs))
        if self.model is None:
            self.model = from_module(self._given, input_size=inputs.shape[-1], **self._setup)
        maps = []
        for x, t in zip(inputs, targets):
            engine = Engine.from_tensor(self.model, x[None].to(self.model.device), target=t, settings=self.settings)
            if self.method in PATHWAY_METHODS:
                result = engine.pathway(sparsity, mode, selector, PATHWAY_METHODS[self.method])
                maps.append(result.map)
            else:
                maps.append(engine.attribution(self.method))
        return torch.from_numpy(np.stack(maps)).to(inputs.device)


def explain_func(model, inputs, targets, method: str = "pathway-gradient", **kwargs) -> np.ndarray:
    """Quantus's explain_func: numpy N x C x H x W inputs (or a tensor) and N targets in, numpy
    N x 1 x H x W maps out. kwargs: sparsity, mode, selector, and Attribution's mean, std and
    gradcam_layer and settings; anything else Quantus passes along (device, ...) is ignored."""
    setup = {k: kwargs[k] for k in ("mean", "std", "gradcam_layer", "settings") if k in kwargs}
    pathway = {k: kwargs[k] for k in ("sparsity", "mode", "selector") if k in kwargs}
    device = next(iter(model.parameters()), torch.zeros(())).device if isinstance(model, nn.Module) \
        else model.device
    x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    targets = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).reshape(-1)
    maps = Attribution(model, method, **setup).attribute(x.to(device), [int(t) for t in targets], **pathway)
    return maps[:, None].cpu().numpy()


def _targets(target, n: int) -> list:
    if target is None or isinstance(target, (int, np.integer)):
        return [None if target is None else int(target)] * n
    values = target.tolist() if isinstance(target, (torch.Tensor, np.ndarray)) else list(target)
    if len(values) != n:
        raise PruneScopeError(f"got {len(values)} targets for {n} inputs")
    return [int(v) for v in values]


def _class_name(method: str) -> str:
    words = re.split(r"[-_]", method.replace("++", "-plus-plus"))
    return "".join(w[:1].upper() + w[1:] for w in words if w)


def _make_class(method: str) -> type:
    return type(_class_name(method), (Attribution,), {"method": method, "__doc__": f"The `{method}` method."})


# PathwayGradient, GradCamPlusPlus, KernelShap, ...: one class per method name.
CLASSES = {method: _make_class(method) for method in ALL_METHODS}
globals().update({cls.__name__: cls for cls in CLASSES.values()})
__all__ = ["Attribution", "explain_func", *(cls.__name__ for cls in CLASSES.values())]
