"""Shared test helpers: real photos from scikit-image, Qt without a display, one shared model."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Found without importing skimage (slow to import); only its bundled photos are used.
SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").origin).parent / "data"


def photo_path(name: str) -> Path:
    """A real photo bundled with scikit-image: coffee.png, chelsea.png, astronaut.png, rocket.jpg,
    motorcycle_left.png, ..."""
    path = SKIMAGE_DATA / name
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image has no photo {name} in {SKIMAGE_DATA}")
    return path


@pytest.fixture
def photo():
    """photo("coffee.png") -> Path of that scikit-image photo."""
    return photo_path


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0 with its embedded ImageNet weights, on the CPU, loaded once per run.
    Frozen and in eval mode: tests must not change it."""
    from core.models import load_model

    return load_model("efficientnet_lite0", device="cpu")
