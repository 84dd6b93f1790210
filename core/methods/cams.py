"""The CAM family from pytorch-grad-cam, on the model's Grad-CAM layer (or --gradcam-layer).

pytorch-grad-cam returns each map scaled to 0..1 at the input's size (its own normalisation,
kept: it is what its users compare against). ViT-like models, whose layer outputs tokens, go
through a reshape of the patch tokens onto their square grid.
"""
from contextlib import contextmanager
from types import SimpleNamespace

from core.methods.base import Method, Setting
from core.methods.gradients import gradcam_support

BATCH = 32  # perturbed forwards per batch for Score-CAM and Ablation-CAM
BATCH_SETTING = Setting("batch", BATCH, 1, 1024, help="channels per forward: changes speed and memory, not the map")


class _LibraryCam(Method):
    family = "cam"
    runs_on_loaded = True
    cam_class = ""  # the pytorch_grad_cam class

    def supports(self, model):
        ok, why = gradcam_support(model)
        return (ok, why.replace("Grad-CAM", self.name, 1))

    def layer(self, model):
        return model.gradcam_layer

    def forwards(self, model, x):
        layer = model.module.get_submodule(model.gradcam_layer)
        channels = getattr(layer, "out_channels", None)  # a convolution's; else unknown
        return None if channels is None else channels + 1

    def _make(self, net, layer, reshape):
        import pytorch_grad_cam

        return getattr(pytorch_grad_cam, self.cam_class)(net, [layer], reshape_transform=reshape)

    def attribute(self, model, net, x, target):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from core.methods.attribution import grad_cam_layer

        layer = grad_cam_layer(model, net)
        prefix = getattr(model, "gradcam_tokens", None)
        cam = self._make(net, layer, None if prefix is None else _TokenGrid(prefix))
        cam.compute_input_gradient = True  # frozen parameters: the input puts the layer in the graph
        cam.batch_size = self.params.get("batch", BATCH)
        with cam, _silent_bars():
            maps = cam(x.detach().clone(), targets=[ClassifierOutputTarget(target)])
        return maps[0].astype("float32")


@contextmanager
def _silent_bars():
    """Score-CAM and Ablation-CAM print a tqdm bar per map to stderr: their modules' tqdm is
    swapped for a silent one while they run (only their own references change)."""
    from pytorch_grad_cam import ablation_cam, score_cam

    silent = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    saved = score_cam.tqdm, ablation_cam.tqdm
    score_cam.tqdm = ablation_cam.tqdm = silent
    try:
        yield
    finally:
        score_cam.tqdm, ablation_cam.tqdm = saved


class _TokenGrid:
    """pytorch-grad-cam's reshape_transform for tokens: the patch tokens after `prefix` class or
    distillation tokens, laid on their square grid, channels first."""

    def __init__(self, prefix: int):
        self.prefix = prefix

    def __call__(self, tokens):
        from core.errors import UnsupportedMethod
        from core.network.tokens import grid_side

        patches = tokens[:, self.prefix:]
        side = grid_side(tokens.shape[1], self.prefix) if tokens.ndim == 3 else None
        if side is None:
            raise UnsupportedMethod(f"cannot lay tokens of shape {tuple(tokens.shape)} on a square grid")
        return patches.reshape(patches.shape[0], side, side, -1).permute(0, 3, 1, 2)


class GradCamPlusPlus(_LibraryCam):
    name, cam_class = "grad-cam++", "GradCAMPlusPlus"


class XGradCam(_LibraryCam):
    name, cam_class = "xgrad-cam", "XGradCAM"


class HiResCam(_LibraryCam):
    name, cam_class = "hires-cam", "HiResCAM"


class LayerCam(_LibraryCam):
    name, cam_class = "layer-cam", "LayerCAM"


class EigenCam(_LibraryCam):
    name, cam_class = "eigen-cam", "EigenCAM"
    passes = "1 forward and an SVD"


class ScoreCam(_LibraryCam):
    name, cam_class = "score-cam", "ScoreCAM"
    passes = "1 forward per channel of the layer"
    interactive = False
    options = (BATCH_SETTING,)


class AblationCam(_LibraryCam):
    name, cam_class = "ablation-cam", "AblationCAM"
    passes = "1 forward per channel of the layer"
    interactive = False
    options = (BATCH_SETTING,)

    def _make(self, net, layer, reshape):
        from pytorch_grad_cam import AblationCAM

        return AblationCAM(net, [layer], reshape_transform=reshape, batch_size=self.params["batch"])
