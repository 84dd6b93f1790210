"""The pruned-model checkpoint: metadata beside the state dict of a model whose convolutions,
batch norms and linears have fewer channels than its architecture's. Written by
core.model_pruning, read here, where models are loaded: loading never depends on pruning."""
import torch
from torch import nn

from core.errors import ModelError
from core.models.weights import PRUNED_KEY

FORMAT = 1
DEFAULT_INPUT_SIZE = 224  # of checkpoints that do not say theirs: ImageNet models



def checkpoint(module: nn.Module, arch: str, info: dict) -> dict:
    """A dict torch.load(weights_only=True) reads: metadata and the state dict. Grouped convs'
    group counts are stored, since a weight's shape alone does not give them."""
    groups = {name: m.groups for name, m in module.named_modules()
              if isinstance(m, nn.Conv2d) and m.groups > 1}
    meta = {"arch": arch, "format": FORMAT, "groups": groups, **info}
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return {PRUNED_KEY: meta, "state_dict": state}


def load_pruned(module: nn.Module, checkpoint: dict) -> nn.Module:
    """Reshape a freshly built base architecture's convs, batch norms and linears to the
    checkpoint's shapes, load its state dict strictly and run it once on a blank input, so that
    a damaged or hostile checkpoint fails here, as one ModelError, and not at its first use."""
    meta, state = pruned_contents(checkpoint)
    groups = meta.get("groups", {})
    try:
        for name, m in module.named_modules():
            prefix = f"{name}." if name else ""
            weight = state.get(prefix + "weight")
            if isinstance(m, nn.Conv2d) and weight is not None:
                _reshape_conv(m, weight, groups.get(name), state.get(prefix + "bias"))
            elif isinstance(m, nn.BatchNorm2d) and prefix + "running_mean" in state:
                _reshape_bn(m, _sized(state[prefix + "running_mean"], 1, prefix + "running_mean").shape[0])
            elif isinstance(m, nn.Linear) and weight is not None:
                m.out_features, m.in_features = _sized(weight, 2, prefix + "weight").shape
                m.weight = nn.Parameter(torch.empty_like(weight))
                if m.bias is not None:
                    m.bias = nn.Parameter(torch.empty(weight.shape[0]))
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise ModelError(f"pruned weights do not fit {meta['arch']}: {_first_line(err)}") from None
    # Checkpoints that save_pruned writes store the input size; a ViT knows its own.
    size = meta.get("input_size") or getattr(module, "image_size", DEFAULT_INPUT_SIZE)
    _trial_forward(module, meta["arch"], size)
    return module


def pruned_contents(checkpoint) -> tuple[dict, dict]:
    """The checkpoint's metadata and state dict, checked: each fault is one ModelError line."""
    meta = checkpoint.get(PRUNED_KEY) if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or not isinstance(state, dict) or not state:
        raise ModelError(f"not a PruneScope pruned-model checkpoint (needs '{PRUNED_KEY}' "
                         "metadata as a dict and a 'state_dict' of tensors)")
    if not isinstance(meta.get("arch"), str) or not meta["arch"]:
        raise ModelError(f"pruned-model metadata: 'arch' must name the architecture, got {meta.get('arch')!r:.40}")
    version = meta.get("format", FORMAT)
    if not _is_int(version) or version > FORMAT or version < 1:
        raise ModelError(f"pruned-model metadata: format {version!r:.20} is not one this PruneScope "
                         f"reads (1..{FORMAT})")
    groups = meta.get("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(k, str) and _is_int(v) and 1 <= v <= 1 << 16
                                               for k, v in groups.items()):
        raise ModelError("pruned-model metadata: 'groups' must map layer names to group counts of "
                         f"at least 1, got {groups!r:.60}")
    size = meta.get("input_size", DEFAULT_INPUT_SIZE)
    if not _is_int(size) or not 8 <= size <= 1024:
        raise ModelError(f"pruned-model metadata: input_size must be 8..1024 pixels, got {size!r:.20}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"pruned-model state dict: {key!r:.60} is not a named tensor")
        if value.is_meta or value.layout != torch.strided:
            raise ModelError(f"pruned-model state dict: {key} holds no data ({value.device} "
                             f"{value.layout} tensor)")
    return meta, state


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sized(t: torch.Tensor, dims: int, key: str) -> torch.Tensor:
    if t.dim() != dims or 0 in t.shape:
        raise ValueError(f"{key} has shape {tuple(t.shape)}, expected {dims} non-empty dimensions")
    return t


def _first_line(err: Exception) -> str:
    """load_state_dict's message is a header, then one line per key: the first key is enough."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)


def _trial_forward(module: nn.Module, arch: str, size: int) -> None:
    """Layers whose shapes each load but do not chain (10 channels out, 12 expected in) fail here."""
    training = module.training
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, size, size))
    except Exception as err:
        raise ModelError(f"pruned weights of {arch} do not fit together: {_first_line(err)}") from None
    finally:
        module.train(training)


def _reshape_conv(m: nn.Conv2d, weight: torch.Tensor, groups, bias) -> None:
    out_ch, in_per_group = _sized(weight, 4, "a convolution's weight").shape[:2]
    if groups is None:
        # A depthwise conv stays depthwise when its channels are removed.
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        groups = out_ch if depthwise else m.groups
    if out_ch % groups:
        raise ValueError(f"{out_ch} output channels cannot form {groups} groups")
    m.groups, m.out_channels, m.in_channels = int(groups), int(out_ch), int(in_per_group * groups)
    m.weight = nn.Parameter(torch.empty_like(weight))
    if m.bias is not None or bias is not None:
        m.bias = nn.Parameter(torch.empty(out_ch))


def _reshape_bn(m: nn.BatchNorm2d, n: int) -> None:
    m.num_features = n
    if m.affine:
        m.weight = nn.Parameter(torch.empty(n))
        m.bias = nn.Parameter(torch.empty(n))
    if m.track_running_stats:
        m.running_mean = torch.zeros(n)
        m.running_var = torch.ones(n)
