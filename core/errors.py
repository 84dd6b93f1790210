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
