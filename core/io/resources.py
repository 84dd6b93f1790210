"""One way to find bundled files, from source and inside the frozen (PyInstaller) app."""
import sys
from pathlib import Path


def resource_root() -> Path:
    # PyInstaller unpacks data next to the executable and records where in sys._MEIPASS.
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    return Path(__file__).resolve().parents[2] / "resources"


def resource_path(*parts: str) -> Path:
    return resource_root().joinpath(*parts)


def sample_images() -> list[Path]:
    return _photos(resource_path("samples"))


def calibration_images() -> list[Path]:
    """The default calibration set of whole-model pruning: the bundled samples and
    scikit-image's sample photos (a dependency, so they are always there), each name once."""
    import skimage

    ours = sample_images()
    names = {p.name for p in ours}
    theirs = Path(skimage.__file__).parent / "data"
    return ours + [p for p in (_photos(theirs) if theirs.is_dir() else []) if p.name not in names]


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
