"""The synthetic benchmark: deterministic generation, exact masks, and a CNN that learns it."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import PruneScopeError
from core.evaluation.synthetic import (SmallResNet, SyntheticConfig, TrainConfig, accuracy, cache_key,
                                       iter_trained_model, make_item, make_split, reinitialise)
from core.progress import run


def synthetic_cache(tmp_path_factory) -> Path:
    """One cache folder per test session, shared by every module, so the CNN is trained once.
    PRUNESCOPE_TEST_SYNTHETIC_CACHE names a lasting one (to iterate on tests locally)."""
    lasting = os.environ.get("PRUNESCOPE_TEST_SYNTHETIC_CACHE")
    if lasting:
        return Path(lasting)
    return tmp_path_factory.getbasetemp() / "synthetic-cache"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The benchmark CNN with its default data and training settings, on the CPU (one thread:
    on a shared machine, competing threads slow training down several times)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(iter_trained_model(SyntheticConfig(), TrainConfig(),
                                      synthetic_cache(tmp_path_factory), torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)


def test_items_are_reproducible_from_the_seed_alone():
    config = SyntheticConfig(seed=3)
    image, label, mask = make_item(config, "test", 7)
    again = make_item(SyntheticConfig(seed=3, train=10, test=10), "test", 7)
    assert np.array_equal(image, again[0]) and label == again[1] and np.array_equal(mask, again[2])
    other_seed = make_item(SyntheticConfig(seed=4), "test", 7)
    other_split = make_item(config, "train", 7)
    assert not np.array_equal(image, other_seed[0])
    assert not np.array_equal(image, other_split[0])
    # a slice of a split is the same items, generated on their own
    part = make_split(config, "test", count=4, start=5)
    assert list(part.index) == [5, 6, 7, 8]
    assert np.array_equal(part.images[2], image) and np.array_equal(part.masks[2], mask)


def test_every_image_has_one_uniformly_coloured_object_inside_the_frame():
    config = SyntheticConfig(classes=10, size=64)
    data = make_split(config, "train", count=60)
    assert data.images.shape == (60, 64, 64, 3) and data.images.dtype == np.uint8
    assert set(data.labels) == set(range(10))  # 60 draws cover 10 classes
    for image, mask in zip(data.images, data.masks):
        area = mask.mean()
        assert 0.01 < area < 0.2
        # the object is painted last, in one colour: the mask is exactly its pixels
        colours = np.unique(image[mask], axis=0)
        assert len(colours) == 1
        # it does not touch the border
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_the_object_shape_alone_sets_the_class():
    """Colour and place of the object are drawn independently of its class."""
    data = make_split(SyntheticConfig(classes=6), "test", count=300)
    # object colour and position are not informative: their per-class means are alike
    centres = np.array([np.argwhere(m).mean(0) for m in data.masks])
    colours = np.array([img[m][0] for img, m in zip(data.images, data.masks)], float)
    for values in (centres, colours):
        per_class = np.array([values[data.labels == c].mean(0) for c in range(6)])
        spread = values.std(0) / np.sqrt((data.labels == 0).sum())
        assert np.all(np.abs(per_class - values.mean(0)) < 4 * spread + 1e-9)


def test_bad_configs_are_refused():
    with pytest.raises(PruneScopeError):
        SyntheticConfig(classes=1)
    with pytest.raises(PruneScopeError):
        SyntheticConfig(classes=11)
    with pytest.raises(PruneScopeError):
        SyntheticConfig(size=16)
    with pytest.raises(PruneScopeError):
        make_split(SyntheticConfig(), "validation", count=2)


def test_model_is_a_residual_relu_network_of_the_right_shape():
    net = SmallResNet(7).eval()
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 7)
    assert any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    assert any(type(m).__name__ == "BasicBlock" for m in net.modules())
    a = reinitialise(SmallResNet(3), seed=5).state_dict()
    b = reinitialise(SmallResNet(3), seed=5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_key_depends_on_every_setting():
    base = cache_key(SyntheticConfig(), TrainConfig())
    assert base == cache_key(SyntheticConfig(), TrainConfig())
    assert base != cache_key(SyntheticConfig(seed=1), TrainConfig())
    assert base != cache_key(SyntheticConfig(), TrainConfig(epochs=3))


@pytest.mark.slow
def test_trained_model_reaches_95_percent_and_is_cached(trained, tmp_path_factory):
    config = SyntheticConfig()
    test = make_split(config, "test")
    model = trained.model
    acc = accuracy(model.module, test, model.mean, model.std, model.device)
    assert acc > 0.95
    assert acc == pytest.approx(trained.test_accuracy)
    assert model.input_size == 64 and model.class_names == config.class_names
    # a second request loads the same weights from the cache instead of training
    again = run(iter_trained_model(config, TrainConfig(), synthetic_cache(tmp_path_factory),
                                   torch.device("cpu"), may_train=False))
    assert again.cached
    for key, value in model.module.state_dict().items():
        assert torch.equal(value.cpu(), again.model.module.state_dict()[key])


def test_missing_cache_without_training_is_a_clear_error(tmp_path):
    with pytest.raises(PruneScopeError, match="missing from the cache"):
        run(iter_trained_model(SyntheticConfig(), TrainConfig(), tmp_path, may_train=False))


def test_training_is_deterministic(tmp_path):
    from core.evaluation.synthetic import channel_stats, iter_train

    data = make_split(SyntheticConfig(classes=3), "train", count=96)
    mean, std = channel_stats(data.images)
    config = TrainConfig(epochs=10, batch_size=32, seed=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `trained`: on a shared machine competing threads slow it down ten times
    try:
        nets = [run(iter_train(reinitialise(SmallResNet(3, width=8), 1), data.images, data.labels,
                               mean, std, config, torch.device("cpu"))) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    a, b = (n.state_dict() for n in nets)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and it trains: 10 epochs fit the 96 images (0.92 measured; chance is 1/3, the largest class 0.45)
    assert accuracy(nets[0], data, mean, std, torch.device("cpu")) > 0.8
