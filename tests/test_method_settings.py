"""Each method's settings (core.methods.base.Setting), and the slow methods run in resumable steps
(core.methods.library_run), as the app runs them: both must give explain's map."""
import gc
import threading

import numpy as np
import pytest
import torch

from core.errors import PruneScopeError
from core.io.baselines import BASELINES, baseline_image
from core.methods import BY_NAME, PLAIN, base, checked_settings, configured, parse_settings
from core.pathway.engine import Engine
from core.progress import run
from tests.conftest import CLASSES, loaded, photo_path, tiny_net

SLOW = ("occlusion", "rise", "kernel-shap", "lime", "score-cam", "ablation-cam")
SMALL = {"rise": {"masks": 40}, "kernel-shap": {"samples": 30, "segments": 12},
         "lime": {"samples": 30, "segments": 12}, "occlusion": {"window": 8, "stride": 4}}


@pytest.fixture
def image():
    from core.io.images import load_image

    return load_image(photo_path("chelsea.png"))  # a photo: SLIC finds its superpixels


@pytest.fixture
def tiny_model():
    return loaded(tiny_net(), "tiny", 32, [f"c{i}" for i in range(CLASSES)], "conv2")


def test_settings_parse_and_check_with_messages_that_name_what_is_allowed():
    assert parse_settings("integrated-gradients.steps=20, occlusion.window=48,smoothgrad.noise=0.2") == {
        "integrated-gradients": {"steps": 20}, "occlusion": {"window": 48}, "smoothgrad": {"noise": 0.2}}
    # a pathway-<method> takes its method's; a default is no setting at all
    assert parse_settings("pathway-integrated-gradients.baseline=blur,rise.masks=500") == {
        "integrated-gradients": {"baseline": "blur"}}
    assert configured("pathway-rise", {"rise": {"masks": 9}}).params["masks"] == 9
    assert parse_settings("occlusion.window=auto") == {}
    bad = {"integrated-gradients.foo=1": "has no setting 'foo': choose from steps, baseline",
           "integrated-gradients.steps=0": "must be a whole number from 1 to 1000, got '0'",
           "smoothgrad.samples=2.5": "whole number",
           "smoothgrad.noise=nan": "a number from 0 to 1",
           "deeplift.baseline=white": "must be mean or blur or black",
           "grad-cam.batch=2": "has no setting 'batch': it has none",
           "nomethod.x=1": "unknown method 'nomethod'",
           "steps=3": "expected NAME.KEY=VALUE"}
    for text, message in bad.items():
        with pytest.raises(PruneScopeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_settings(text)


def test_every_option_is_read_by_its_method_and_the_baselines_agree():
    assert base.BASELINES == BASELINES
    for method in PLAIN:
        for option in method.options:
            assert option.checked(method.name, option.default) == option.default
            assert option.key in method.params
    assert BY_NAME["integrated-gradients"].configured({"steps": "7"}).summary() == "steps 7, baseline mean"


def test_integrated_gradients_settings_equal_captums_and_keep_completeness(tiny_model, image):
    from captum.attr import IntegratedGradients

    engine = Engine(tiny_model, image, target=1, settings={"integrated-gradients": {"steps": 8, "baseline": "black"}})
    x = engine.x
    black = baseline_image(x, "black", tiny_model.mean, tiny_model.std)
    grads = IntegratedGradients(engine.module).attribute(x.clone().requires_grad_(True), baselines=black, target=1,
                                                         n_steps=8)
    from core.methods.attribution import collapse_channels

    np.testing.assert_allclose(engine.attribution("integrated-gradients"), collapse_channels(grads), rtol=1e-5,
                               atol=1e-7)
    # in steps, as the app runs it: the same map
    stepped = run(Engine(tiny_model, image, target=1, settings=engine.settings)
                  .iter_attribution("integrated-gradients", 1e-9))
    np.testing.assert_allclose(stepped, engine.attribution("integrated-gradients"), rtol=1e-4, atol=1e-7)
    # other settings are other maps, kept apart in the same caches
    plain = engine.with_settings({})
    assert not np.allclose(plain.attribution("integrated-gradients"), engine.attribution("integrated-gradients"))
    np.testing.assert_array_equal(plain.attribution("integrated-gradients"),
                                  Engine(tiny_model, image, target=1).attribution("integrated-gradients"))


@pytest.mark.parametrize("settings", [{}, {"samples": 7, "seed": 3, "noise": 0.2, "baseline": "blur"}])
def test_gradient_shap_in_steps_equals_captums(tiny_model, image, settings):
    engine = Engine(tiny_model, image, target=2, settings={"gradient-shap": settings})
    whole = engine.attribution("gradient-shap")  # Captum's GradientShap, one call
    again = Engine(tiny_model, image, target=2, settings=engine.settings)
    job = again.iter_attribution("gradient-shap", 1e-9)
    next(job)
    torch.rand(5)  # the worker's own draws between steps change nothing
    np.testing.assert_allclose(run(job), whole, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("method", SLOW)
def test_a_slow_method_in_steps_equals_its_one_call_and_resumes(tiny_model, image, method):
    engine = Engine(tiny_model, image, target=1, settings=SMALL)
    whole = engine.attribution(method)
    stepped = Engine(tiny_model, image, target=1, settings=SMALL)
    job = stepped.iter_attribution(method, 1e-9)  # a forward of a few rows per step
    for _ in range(3):
        next(job)
        torch.rand(7), np.random.rand(3)  # draws between steps: the library's stay its own
    job.close()  # the app moved on: the run waits in the engine, and goes on where it was
    out = run(stepped.iter_attribution(method, 1e-9))
    np.testing.assert_allclose(out, whole, rtol=1e-4, atol=1e-6)
    # not an empty equality (LIME's lasso zeroes every weight of the tiny net's small logit changes)
    assert float(np.abs(whole).max()) > 0 or method == "lime"


def test_a_run_waiting_between_steps_leaves_the_model_alone_and_ends_when_dropped(tiny_model, image):
    layer = tiny_model.module.conv2
    before = {id(m) for m in tiny_model.module.modules()}
    engine = Engine(tiny_model, image, target=1)
    job = engine.iter_attribution("ablation-cam", 1e-9)
    next(job), next(job)
    # pytorch-grad-cam swaps the layer for its ablation layer and hooks it: on a copy, not the model
    assert tiny_model.module.conv2 is layer and {id(m) for m in tiny_model.module.modules()} == before
    assert not layer._forward_hooks
    threads = [t for t in threading.enumerate() if t.name == "prunescope ablation-cam"]
    assert threads
    del job, engine
    gc.collect()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_a_slow_methods_pathway_version_in_steps_and_its_coarse_first_map(tiny_model, image):
    engine = Engine(tiny_model, image, target=1, settings={"rise": {"masks": 200}})
    stepped = run(engine.iter_pathway(50.0, method="rise", step_seconds=1e-9))
    whole = engine.pathway(50.0, method="rise")
    np.testing.assert_allclose(stepped.map, whole.map, rtol=1e-4, atol=1e-6)
    assert stepped.prob == pytest.approx(whole.prob, rel=1e-5) and stepped.kept == whole.kept
    assert not np.allclose(whole.map, engine.attribution("rise"))
    # the app's first look: the first 100 of the same masks, kept apart from the full map
    assert not engine.has_coarse("rise")  # the full map is there
    fresh = Engine(tiny_model, image, target=1, settings=engine.settings)
    assert fresh.has_coarse("rise") and not fresh.has_coarse("gradient")
    coarse = run(fresh.iter_attribution("rise", 1e-9, coarse=True))
    np.testing.assert_allclose(coarse, engine.with_settings({"rise": {"masks": 100}}).attribution("rise"),
                               rtol=1e-4, atol=1e-6)
    assert not fresh.with_settings({"rise": {"masks": 50}}).has_coarse("rise")  # no fewer than asked


def test_checked_settings_merge_a_methods_keys_and_drop_defaults():
    assert checked_settings({"pathway-rise": {"masks": "64"}, "rise": {"keep": 0.3}}) == {
        "rise": {"masks": 64, "keep": 0.3}}
    assert checked_settings({"rise": {"masks": 500}}) == {}


def test_the_python_api_takes_a_methods_settings(tiny_model, image):
    from core.api import Attribution, IntegratedGradients

    x = Engine(tiny_model, image).x
    few = Attribution(tiny_model, "integrated-gradients", settings={"steps": 4, "baseline": "black"}).attribute(
        x, target=1)
    expected = Engine.from_tensor(tiny_model, x, 1, settings={"integrated-gradients": {"steps": 4, "baseline": "black"}})
    np.testing.assert_allclose(few[0].numpy(), expected.attribution("integrated-gradients"), rtol=1e-6)
    assert not torch.allclose(few, IntegratedGradients(tiny_model).attribute(x, target=1))
    with pytest.raises(PruneScopeError, match="integrated-gradients has no setting 'stpes'"):
        Attribution(tiny_model, "integrated-gradients", settings={"stpes": 4})


@pytest.mark.parametrize("method", ["integrated-gradients", "grad-cam++", "guided-grad-cam", "deeplift"])
def test_every_pathway_version_in_steps_equals_its_one_call(image, method):
    """The app's ↝ rows: the sums in steps of the pruned network, the others as their pathway
    version's call on a copy of it (DeepLIFT's on its masks as modules)."""
    engine = Engine(tiny_model_for_steps(), image, target=1)
    stepped = run(engine.iter_pathway(60.0, method=method, step_seconds=1e-9))
    whole = engine.pathway(60.0, method=method)
    np.testing.assert_allclose(stepped.map, whole.map, rtol=1e-4, atol=1e-6 * float(np.abs(whole.map).max()))
    assert stepped.prob == pytest.approx(whole.prob, rel=1e-5)


@pytest.mark.parametrize("method", ["gradient", "integrated-gradients"])
def test_a_pathway_step_gives_up_its_forward_for_a_slider_move_and_runs_again(image, method, monkeypatch):
    """A ↝ row's forward asks core.progress.hurry at each layer: wanted elsewhere, it gives up
    and the step ends; the next step runs it again, and the map equals the one call's."""
    from core import progress

    engine = Engine(tiny_model_for_steps(), image, target=1)
    whole = engine.pathway(60.0, method=method)
    answers = iter([False, True])  # the first forward's second layer: wanted elsewhere
    monkeypatch.setattr(progress, "hurry", lambda: next(answers, False))
    steps = engine.iter_pathway(60.0, method=method, step_seconds=10.0)
    given_up = next(steps)
    assert next(answers, "spent") == "spent" and given_up.done == 0.0
    stepped = run(steps)
    np.testing.assert_allclose(stepped.map, whole.map, rtol=1e-5, atol=1e-7 * float(np.abs(whole.map).max()))
    assert stepped.prob == pytest.approx(whole.prob, rel=1e-6)


def test_a_step_waiting_on_a_long_forward_ends_at_once_when_the_worker_is_wanted(monkeypatch):
    """A forward that cannot be cut (detach: on the run's own network) goes on beside the worker
    as soon as a more urgent job waits (core.progress.hurry), and the run still ends with its result."""
    import time

    from torch import nn

    from core import progress
    from core.methods.library_run import LibraryRun

    class Slow(nn.Module):
        def forward(self, x):
            time.sleep(0.3)
            return x * 2

    x = torch.ones(1, 3)
    monkeypatch.setattr(progress, "hurry", lambda: True)
    run_ = LibraryRun(lambda gated: gated(x), Slow, x, 0.5, None, "slow", detach=True)
    steps = run_.steps(0.5)
    began = time.perf_counter()
    next(steps)  # building and timing the network: its own forwards, then the call's
    assert time.perf_counter() - began < 0.25  # not the 0.5 s step, nor the 0.3 s forward
    torch.testing.assert_close(run(steps), x * 2)


def tiny_model_for_steps():
    """A CNN of ReLU modules, which every pathway version supports (DeepLIFT's included)."""
    from torch import nn

    from core.models.loading import from_module

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return from_module(net, input_size=32, gradcam_layer="2")
