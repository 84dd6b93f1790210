"""Weights from the network: torchvision's files in torch hub's cache, downloaded only when the
host answers, never waiting on a dead network."""
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from core.errors import ModelError

REACH_TIMEOUT_S = 3.0


def hub_weights_path(url: str) -> Path:
    """Where torch hub keeps (and looks for) the file downloaded from `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def hub_file(name: str, url: str) -> Path:
    """The weights at `url` in torch hub's cache, downloaded there first if missing.
    Never waits on a dead network and never falls back to random weights."""
    path = hub_weights_path(url)
    if path.is_file():
        return path
    host = urlparse(url).hostname
    if not network_reachable(host):
        raise ModelError(f"{name}: no ImageNet weights offline; download {url} into "
                         f"{path.parent} or pass --weights FILE")
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = path.stem.rsplit("-", 1)[-1]  # torchvision names files <arch>-<sha256 prefix>.pth
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=False)
    except (OSError, RuntimeError) as err:
        raise ModelError(f"{name}: could not download {url} ({err}); put the file into "
                         f"{path.parent} or pass --weights FILE") from None
    return path


def network_reachable(host: str, port: int = 443, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds. Name lookup ignores
    socket timeouts, so the whole attempt runs in a thread we stop waiting for."""
    result = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
