"""What the window asks the worker for: the start-up job (models, devices, colours), which also
sets the worker's torch threads. Runs on the worker thread; it never touches a widget."""
import gc
import os
from dataclasses import dataclass

import numpy as np

from core.progress import Progress


@dataclass
class StartupInfo:
    models: list  # [(name, description, usable offline)]
    devices: dict  # name -> available
    luts: dict  # colormap -> 256x3 uint8
    classic_methods: tuple
    image_suffixes: tuple


def worker_threads() -> int:
    """Torch threads for the worker: every core on a machine of up to 4, one left to the GUI
    thread above that. The GUI thread needs a core only in bursts: on 2 cores, giving the worker
    both put everything on screen sooner and the map closer behind the slider, with the GUI's
    longest stall unchanged (`bench --gui`; the figures are in README)."""
    import torch

    cores = os.cpu_count() or 2
    return max(1, min(torch.get_num_threads(), cores if cores <= 4 else cores - 1))


def startup():
    """What the window needs from core before it can offer choices: models, devices, colours.
    Everything the analysis imports is imported here, before any image is shown: an import
    holds the interpreter lock for up to a second, which would freeze the GUI thread later."""
    yield Progress(0.0, "loading PyTorch")
    import torch

    torch.set_num_threads(worker_threads())
    import core.pathway.engine  # noqa: F401  (Captum, zennit, torchvision)
    # pytorch-grad-cam is left to the first CAM of its asked for: with scikit-learn it takes a
    # second, which would delay every start-up (measured: the first image 1.6 s later)
    from core.io import display
    from core.io.images import IMAGE_SUFFIXES
    from core.methods import CLASSIC_METHODS
    from core.models.loading import list_models
    from core.runtime.device import available_devices

    models = [(info.name, info.description, info.offline) for info in list_models()]
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    luts = {name: display.colorize(ramp, name) for name in display.COLORMAPS}
    info = StartupInfo(models, available_devices(), luts, CLASSIC_METHODS, tuple(IMAGE_SUFFIXES))
    # What is alive now (the libraries just imported, the window) lives as long as the app: out of the
    # cyclic collector's sight, a full collection no longer scans it. Scanning it took 0.3 s on the
    # GUI thread, long enough to delay a slider move's map (bench --gui: p95 0.43 s at 350 ms).
    gc.freeze()
    return info
