"""Shared test helpers: real photos from scikit-image, Qt without a display, one shared model, and
a tiny CNN whose channels' importance is known (for pruning and fast CLI runs)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import importlib  # noqa: E402
import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

# Found without importing skimage (slow to import); only its bundled photos are used.
SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").origin).parent / "data"


def installed(name: str):
    """The module, imported, where it is installed: a test skips only where it is not, and fails
    where it is but does not import (pytest.importorskip would skip that too)."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    return importlib.import_module(name)


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
    from core.models.loading import load_model

    return load_model("efficientnet_lite0", device="cpu")


# --- a tiny CNN with known dead and unused channels -------------------------------------------------

DEAD = (1, 6)   # conv1 channels with zero weights: never active
UNUSED = 3      # conv1 channel with big weights whose output conv2 ignores
CLASSES = 4


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = Tiny()
    with torch.no_grad():
        net.conv1.weight.abs_()  # positive inputs and weights: every live channel is active
        net.conv1.weight[list(DEAD)] = 0  # BN of a zero map (mean 0, var 1, bias 0) stays zero
        net.conv1.weight[UNUSED] *= 5     # the largest filter ...
        net.conv2.weight[:, UNUSED] = 0   # ... that nothing reads
    return net.eval().requires_grad_(False)


def loaded(module: nn.Module, name: str, size: int, classes: list[str], gradcam: str):
    from core.models.loading import LoadedModel

    return LoadedModel(name, module, torch.device("cpu"), classes, size, size,
                       (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), gradcam)


@pytest.fixture
def tiny():
    return loaded(tiny_net(), "tiny", 32, [f"c{i}" for i in range(CLASSES)], "conv2")


@pytest.fixture
def tiny_cli(tiny, tmp_path, photo, monkeypatch):
    """The CLI with load_model answering the tiny net, and a calibration folder of two photos."""
    from PIL import Image

    import core.models.loading

    monkeypatch.setattr(core.models.loading, "load_model", lambda *a, **k: tiny)
    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("coffee.png", "chelsea.png"):
        Image.open(photo(name)).convert("RGB").resize((40, 32)).save(calib / name)
    return calib
