"""Reading weights files safely, fitting them to a module, and telling weights apart by a hash.

.pth/.pt files are only ever read with torch.load(weights_only=True); .safetensors files hold
nothing but tensors. Every failure is one ModelError line.
"""
import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import ModelError

PRUNED_KEY = "prunescope_pruned"  # written by core.models.pruned.checkpoint


def read_weights_file(path) -> object:
    """The file's contents: a dict of tensors for .safetensors, whatever torch.load's safe
    unpickler accepts otherwise."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such weights file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a weights file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty weights file")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():  # the unpickler warns about protocols before it refuses
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch words it "Unsupported global" or "unsupported GLOBAL" depending on the version
        if "unsupported global" in str(err).lower():
            raise ModelError(f"{path}: refused: it holds Python objects beyond tensors and "
                             "loading it could run code; save a state_dict instead") from None
        raise ModelError(f"{path}: not a PyTorch weights file") from None
    except Exception:  # torch.load fails in many ways (zip, key, EOF, storage errors) on bad bytes
        raise ModelError(f"{path}: not a PyTorch weights file, or a corrupt one") from None


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError("reading .safetensors needs the safetensors package: "
                         "pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # its Rust reader raises its own error types on bad bytes
        raise ModelError(f"{path}: not a valid safetensors file ({err})") from None


def state_dict_of(checkpoint, path) -> dict:
    """The state dict in a checkpoint: the dict itself, or under 'state_dict' or 'model'."""
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        raise ModelError(f"{path}: holds no state dict (a dict of tensors, possibly under "
                         "'state_dict' or 'model')")
    # Checkpoints saved from nn.DataParallel prefix every key with "module."
    if all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def classes_in(module: nn.Module, state: dict, classes: int) -> int | None:
    """How many classes `state` was trained for, read off the output layer: the layers of
    `module` with `classes` outputs whose entries in `state` have another first dimension.
    None when the state has the module's own class count (or no such layer is found)."""
    found = set()
    for name, layer in module.named_modules():
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim < 1 or weight.shape[0] != classes:
            continue
        theirs = state.get(f"{name}.weight" if name else "weight")
        if isinstance(theirs, torch.Tensor) and theirs.ndim == weight.ndim \
                and theirs.shape[0] != classes:
            found.add(int(theirs.shape[0]))
    if len(found) > 1:
        raise ModelError(f"the weights' output layers disagree on the number of classes: "
                         f"{sorted(found)}")
    return found.pop() if found else None


def fit_state_dict(module: nn.Module, state: dict, path) -> None:
    """Load `state` strictly, after checking every key, shape, dtype and value."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label} {', '.join(keys[:3])}{more}")
    if problems:
        raise ModelError(f"{path}: weights do not fit this model: {'; '.join(problems)}")
    check_values(state, own, path)
    module.load_state_dict(state, strict=True)


def check_values(state: dict, own: dict, path) -> None:
    """Floating-point tensors where the module has them, none on the meta device, all finite.
    Integer buffers (BatchNorm's step counter) stay integers."""
    for key, value in state.items():
        mine = own.get(key)
        if value.is_meta:
            raise ModelError(f"{path}: {key} holds no data (a meta-device tensor)")
        if mine is not None and mine.is_floating_point() and not value.is_floating_point():
            raise ModelError(f"{path}: {key} is {value.dtype}, the model needs floating-point values")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelError(f"{path}: {key} holds NaN or infinite values")


def fingerprint(*arrays) -> str:
    """A short hash of arrays' dtypes, shapes and values."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def model_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights and buffers."""
    return fingerprint(*(t.detach().cpu().numpy() for t in module.state_dict().values()))
