"""One way to find bundled files: in a checkout, an installed wheel and the frozen (PyInstaller) app."""
import importlib
import importlib.resources
import sys
from pathlib import Path

from core.errors import PruneScopeError

# The natural photos among our dependencies' sample data (scikit-image's also holds a scanned
# page, text, a CT phantom, microscopy, ...): pruning calibrates on what the model will see.
CALIBRATION_PHOTOS = {
    "skimage": ("data", ("astronaut.png", "brick.png", "camera.png", "coins.png", "grass.png", "gravel.png",
                         "moon.png", "motorcycle_left.png", "motorcycle_right.png")),
    "matplotlib": ("mpl-data/sample_data", ("grace_hopper.jpg",)),
}


class ResourcesMissing(PruneScopeError):
    """The bundled data is not where this install keeps it."""


def resource_root() -> Path:
    # PyInstaller unpacks data next to the executable and records where in sys._MEIPASS.
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    # A checkout and an installed wheel alike: the `resources` package (a plain folder on disk;
    # wheels are never run zipped).
    return Path(str(importlib.resources.files("resources")))


def resource_path(*parts: str) -> Path:
    return resource_root().joinpath(*parts)


def sample_images() -> list[Path]:
    folder = resource_path("samples")
    if not folder.is_dir():
        raise ResourcesMissing(f"the bundled sample photos are missing from {folder}: reinstall PruneScope")
    return _photos(folder)


def calibration_images() -> list[Path]:
    """The default calibration set of whole-model pruning: the bundled samples and the natural
    photos that scikit-image and matplotlib (dependencies, so always there) ship."""
    photos = sample_images()
    for package, (folder, names) in CALIBRATION_PHOTOS.items():
        where = Path(importlib.import_module(package).__file__).parent / folder
        photos += [where / name for name in names if (where / name).is_file()]
    return photos


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
