"""Choosing the torch device: auto, cpu, cuda or mps; seeding torch without touching the caller's RNG."""
from contextlib import contextmanager

import numpy as np
import torch

from core.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> dict[str, bool]:
    mps = getattr(torch.backends, "mps", None)
    return {
        "auto": True,
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps and mps.is_available()),
    }


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device '{name}': choose one of {', '.join(DEVICE_CHOICES)}")
    available = available_devices()
    if name == "auto":
        for candidate in ("cuda", "mps"):
            if available[candidate]:
                return torch.device(candidate)
        return torch.device("cpu")
    if not available[name]:
        raise DeviceError(f"device '{name}' is not available on this machine")
    return torch.device(name)


@contextmanager
def seeded(seed: int, device=None):
    """torch's global RNG (and the CUDA device's) and numpy's seeded for the block (Captum's
    GradientSHAP draws from numpy's); the caller's states are put back afterwards, so repeatable
    maps and weights change nobody else's randomness."""
    device = torch.device(device if device is not None else "cpu")
    saved = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)  # numpy takes 32 bits, torch 64
            yield
    finally:
        np.random.set_state(saved)
