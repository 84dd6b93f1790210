"""Errors a user can cause. Each message is one clear line, fit for a status bar or stderr."""


class PruneScopeError(Exception):
    """Bad input or an unavailable resource: report it, keep going."""


class ImageError(PruneScopeError):
    """An image file that is missing, unreadable, truncated or too large."""


class ModelError(PruneScopeError):
    """An unknown model, or weights that are missing, bad, unsafe or mismatched."""


class DeviceError(PruneScopeError):
    """A device that is not available on this machine."""


class UnsupportedMethod(PruneScopeError):
    """An attribution method that this model's architecture does not support."""


class OutputError(PruneScopeError):
    """An output folder or file that cannot be written, is in use, or would be overwritten."""


def reason(err: BaseException) -> str:
    """Why something failed, in one line: PruneScope's own message, or the error's kind and
    the first line of its message (a torch RuntimeError's message can run to pages)."""
    if isinstance(err, MemoryError):
        return "out of memory"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    lines = str(err).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if isinstance(err, PruneScopeError):
        return first or type(err).__name__
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def about(item, why: str) -> str:
    """`why`, prefixed with the item it is about unless it names it already."""
    return why if str(item) in why else f"{item}: {why}"
