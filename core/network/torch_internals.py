"""The private torch names the engine reads, in one place. They only tell whether the masked
forward may take its fast path (core.network.neurons.MaskedForward); each is checked at import,
and where a torch release renamed one, its probe answers so that the plain multiplied mask is
used: slower, the same maps (a test compares)."""
import torch
from torch.nn.modules import module as _module_globals  # where nn.Module keeps hooks on every module

_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks",
                 "_global_backward_hooks", "_global_backward_pre_hooks")
_HAVE_GLOBAL_HOOKS = all(isinstance(getattr(_module_globals, name, None), dict) for name in _GLOBAL_HOOKS)
_function_mode_enabled = getattr(torch._C, "_is_torch_function_mode_enabled", None)
_top_saved_tensors_hooks = getattr(getattr(torch._C, "_autograd", None), "_top_saved_tensors_default_hooks", None)

# Every probe found: False on a torch that renamed one (the fast path is then never taken).
FOUND = _HAVE_GLOBAL_HOOKS and callable(_function_mode_enabled) and callable(_top_saved_tensors_hooks)


def global_module_hooks() -> bool:
    """Whether a hook registered on every module exists (True where that cannot be known)."""
    if not _HAVE_GLOBAL_HOOKS:
        return True
    return any(getattr(_module_globals, name) for name in _GLOBAL_HOOKS)


def function_mode_active() -> bool:
    """Whether a TorchFunctionMode wraps the call (True where that cannot be known)."""
    return True if _function_mode_enabled is None else bool(_function_mode_enabled())


def saved_tensors_as_is() -> bool:
    """Whether autograd keeps saved tensors as they are, with no saved-tensor hook (save_on_cpu,
    say) that packs them when saved (False where that cannot be known)."""
    return _top_saved_tensors_hooks is not None and _top_saved_tensors_hooks(False) is None
