"""Network dissection: known answers, exact streaming accumulators, the concept readers."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core.dissection.concepts import (Concept, ConceptItem, ConceptSource, broden, mask_folder,
                                      synthetic_concepts)
from core.dissection.dissect import Dissection, align_masks, iter_dissect, view_box
from core.dissection.tally import Tally, TopImages, TopValues
from core.dissection.units import receptive_field, unit_crops
from core.errors import PruneScopeError
from core.evaluation.synthetic import SyntheticConfig
from core.models.loading import LoadedModel
from core.progress import run
from tests.test_synthetic import synthetic_cache, trained  # noqa: F401  (session fixture)

SIZE = 64
PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")


def colour_net() -> nn.Module:
    """Unit 0 is a threshold on the red channel, unit 1 is dead, unit 2 fires on grey noise."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 1.0
        conv.bias[0] = -0.75
        conv.weight[2, 1] = 1.0
        conv.bias[2] = -0.45
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()


def as_model(module, size=SIZE) -> LoadedModel:
    return LoadedModel("colour-net", module.requires_grad_(False), torch.device("cpu"), ["a", "b"],
                       size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), None)


def patch_source(count: int = 12) -> ConceptSource:
    """Grey noisy images with a 4x4 red patch (0.4 % of the pixels) and a larger blue one."""
    concepts = [Concept("red", "colour"), Concept("blue", "colour"), Concept("background", "scene")]

    def load(i: int) -> ConceptItem:
        rng = np.random.default_rng(i)
        rgb = np.clip(rng.normal(128, 6, (SIZE, SIZE, 3)), 0, 255)
        masks = np.zeros((3, SIZE, SIZE), bool)
        y, x = rng.integers(0, SIZE - 12, 2)
        masks[0, y:y + 4, x:x + 4] = True
        masks[1, y + 6:y + 12, x + 6:x + 12] = True
        masks[2] = ~(masks[0] | masks[1])
        rgb[masks[0]] = rng.uniform([215, 20, 20], [240, 40, 40], (16, 3))
        rgb[masks[1]] = (30, 30, 220)
        return ConceptItem(rgb.astype(np.uint8), [0, 1, 2], masks, f"patch{i}")

    return ConceptSource("patches", concepts, count, load)


def test_a_red_threshold_unit_detects_red_and_nothing_else():
    model = as_model(colour_net())
    result = run(iter_dissect(model, patch_source(), ["0"], batch=5))
    units = result.layers[0].units
    assert units[0].concept == "red" and units[0].iou > 0.9
    assert not units[1].detector and not units[2].detector
    assert result.summary()[0]["per_concept"] == {"red": 1}
    assert result.summary()[0]["per_category"] == {"colour": 1, "scene": 0}


def test_streaming_accumulators_equal_a_direct_computation():
    rng = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 5, 6, 6, generator=rng).relu() for _ in range(3)]
    every = torch.cat(batches)
    k = 17
    tops, images = TopValues(5, k), TopImages(5, n=4)
    for b, a in enumerate(batches):
        tops.add(a.transpose(0, 1).reshape(5, -1))
        images.add_maps(a, list(range(4 * b, 4 * b + 4)))
    flat = every.transpose(0, 1).reshape(5, -1)
    assert torch.equal(tops.threshold(), flat.sort(dim=1, descending=True).values[:, k - 1])
    peaks = every.flatten(2).amax(2).T  # units x images
    assert torch.equal(images.index, peaks.argsort(dim=1, descending=True, stable=True)[:, :4])
    # IoU counts over images, each with its own concepts present
    masks = torch.rand(12, 3, 36, generator=rng) > 0.7
    fired = torch.rand(12, 5, 36, generator=rng) > 0.6
    present = [[0, 1, 2] if i % 2 else [1] for i in range(12)]
    category_of = [0, 0, 1]
    tally = Tally(5, 3, 2)
    for rows in (range(0, 5), range(5, 12)):
        tally.add(fired[rows.start:rows.stop], [present[i] for i in rows],
                  [masks[i, present[i]] for i in rows],
                  [sorted({category_of[c] for c in present[i]}) for i in rows])
    expected = torch.zeros(5, 3)
    for c in range(3):
        rows = [i for i in range(12) if c in present[i]]
        rows_cat = [i for i in range(12) if any(category_of[d] == category_of[c] for d in present[i])]
        both = sum((fired[i] & masks[i, c]).sum(1) for i in rows)
        union = sum(fired[i].sum(1) for i in rows_cat) + sum(masks[i, c].sum() for i in rows) - both
        expected[:, c] = both / union
    assert torch.allclose(tally.iou(category_of), expected)


def test_masks_follow_the_models_resize_and_crop():
    model = LoadedModel("m", nn.Identity(), torch.device("cpu"), ["a"], 224, 256, (0.5,) * 3, (0.5,) * 3, None)
    box = view_box(model, 300, 600)  # landscape: crop the middle 224/512 of the width
    assert box[0] == pytest.approx(16 / 256) and box[3] == pytest.approx(224 / 512)
    masks = np.zeros((1, 300, 600), bool)
    masks[0, :, :300] = True  # the left half: the view's left half too
    view = align_masks(masks, box, 112)[0]
    assert view[:, :55].all() and not view[:, 57:].any()


def test_synthetic_scenes_give_every_concept_category(tmp_path):
    source = synthetic_concepts(SyntheticConfig(), "test", 20)
    seen = set()
    for i in range(source.count):
        item = source.load(i)
        assert item.masks.shape[0] == len(item.concepts) and item.masks.shape[1:] == (64, 64)
        seen |= {source.concepts[c].category for c in item.concepts}
        assert item.label is not None
    assert seen == {"object", "colour", "pattern", "texture", "background"}
    assert [c.name for c in source.concepts if c.category == "object"] == SyntheticConfig().class_names


def write_broden(root):
    """A two-image Broden sample: a colour label image, an object label image with a label
    number above 255 (R + 256 G), and a whole-image scene label."""
    (root / "images").mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(root / "images" / f"{name}.png")
    color = np.zeros((20, 20, 3), np.uint8)
    color[:10, :, 0] = 3            # label 3, top half
    obj = np.zeros((20, 20, 3), np.uint8)
    obj[:, :5, 0], obj[:, :5, 1] = 300 % 256, 300 // 256  # label 300, left quarter
    Image.fromarray(color).save(root / "images" / "a_color.png")
    Image.fromarray(obj).save(root / "images" / "b_object.png")
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split", "ih", "iw", "sh", "sw", "color", "object", "scene"])
        w.writerow(["a.png", "train", 40, 40, 20, 20, "a_color.png", "", "7"])
        w.writerow(["b.png", "val", 40, 40, 20, 20, "", "b_object.png", ""])
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerow([0, "-", "", 0, 0, ""])
        w.writerow([3, "red", "color(1)", 1, 0.5, ""])
        w.writerow([7, "street", "scene(1)", 1, 1.0, ""])
        w.writerow([300, "car", "object(2);part(1)", 1, 0.25, ""])


def test_the_broden_reader(tmp_path):
    write_broden(tmp_path)
    source = broden(tmp_path)
    assert [(c.name, c.category) for c in source.concepts] == [
        ("red", "color"), ("street", "scene"), ("car", "object")]
    a, b = source.load(0), source.load(1)
    assert [source.concepts[c].name for c in a.concepts] == ["red", "street"]
    assert a.masks[0, :10].all() and not a.masks[0, 10:].any() and a.masks[1].all()
    assert [source.concepts[c].name for c in b.concepts] == ["car"]
    assert b.masks[0, :, :5].all() and not b.masks[0, :, 5:].any()
    assert broden(tmp_path, split="val").count == 1
    (tmp_path / "label.csv").unlink()
    with pytest.raises(PruneScopeError, match="label.csv"):
        broden(tmp_path)


def test_the_mask_folder_reader(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    for name in ("one", "two"):
        Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(images / f"{name}.jpg")
    (masks / "sky").mkdir(parents=True)
    (masks / "stuff" / "grass").mkdir(parents=True)  # a category folder holding concepts
    mask = np.zeros((30, 30), np.uint8)
    mask[:10] = 255
    Image.fromarray(mask).save(masks / "sky" / "one.png")
    Image.fromarray(255 - mask).save(masks / "stuff" / "grass" / "one.png")
    source = mask_folder(images, masks)
    assert [(c.name, c.category) for c in source.concepts] == [("sky", "concept"), ("grass", "stuff")]
    one, two = source.load(0), source.load(1)
    assert one.concepts == [0, 1] and one.masks[0, :10].all() and not one.masks[1, :10].any()
    assert two.concepts == [] and two.masks.shape == (0, 30, 30)
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(other / "three.jpg")
    with pytest.raises(PruneScopeError, match="no mask is named after an image"):
        mask_folder(other, masks)


def test_layers_are_checked():
    model = as_model(colour_net())
    with pytest.raises(PruneScopeError, match="no activation layer 'nope'"):
        run(iter_dissect(model, patch_source(2), ["nope"]))


def test_on_the_synthetic_model_the_last_stage_detects_every_class_shape(trained):  # noqa: F811
    model = trained.model
    config = SyntheticConfig()
    result = run(iter_dissect(model, synthetic_concepts(config, "test", 300), batch=50))
    last = result.layers[-1]
    assert last.name.startswith("layer4")
    found = last.per_concept()
    missing = [shape for shape in config.class_names if not found.get(shape)]
    assert not missing, f"no unit of {last.name} detects {missing}: {found}"
    again = Dissection.from_json(result.to_json())
    assert again.summary() == result.summary()
    # a unit's top images, cropped to its receptive field
    side = receptive_field(model, last.name)
    assert 8 <= side <= 64
    best = max(last.detectors(), key=lambda u: u.iou)
    crops = unit_crops(model, synthetic_concepts(config, "test", 300), last, best.unit, side)
    assert len(crops) == 9 and crops[0][0].shape == (96, 96, 3)
    assert crops[0][1] >= crops[-1][1]


def test_channel_maps_add_up_to_the_pathway_gradient():
    from core.pathway.engine import Engine

    model = as_model(colour_net())
    engine = Engine(model, patch_source(1).load(0).rgb, target=0)
    factors = [m.float() for m in engine.masks(30.0)]
    full = engine._gradient_through(factors, 0, torch.ones_like(factors[0]))
    parts = sum(engine._gradient_through(factors, 0, torch.zeros_like(factors[0]).index_fill_(
        0, torch.tensor([c]), 1.0)) for c in range(3))
    assert torch.allclose(parts, full, atol=1e-6) and full.abs().sum() > 0
    dead = engine.channel_map(0, 1, 30.0)  # the dead unit passes no evidence
    assert dead.shape == (SIZE, SIZE) and not dead.any()
    with pytest.raises(PruneScopeError, match="no channel 7"):
        engine.channel_map(0, 7, 30.0)


def test_the_pathway_runs_through_the_red_detector():
    from core.dissection.units import pathway_concepts
    from core.pathway.engine import Engine

    model = as_model(colour_net())
    result = run(iter_dissect(model, patch_source(), ["0"], batch=5))
    engine = Engine(model, patch_source(1).load(0).rgb, target=0)
    ranked = pathway_concepts(result, engine.layers, engine.masks(50.0), engine.scores())
    assert [e["concept"] for e in ranked] == ["red"] and ranked[0]["units"] == [(result.layers[0].name, 0)]
    assert 0 < ranked[0]["share"] <= 1


def test_an_unreadable_image_is_left_out_and_named():
    from core.errors import ImageError

    source = patch_source(8)
    load = source.load

    def flaky(i: int):
        if i == 3:
            raise ImageError("patch3.png: truncated")
        return load(i)

    source.load = flaky
    result = run(iter_dissect(as_model(colour_net()), source, ["0"], batch=3))
    assert result.skipped == {"3": "patch3.png: truncated"} and result.image_names[3] == ""
    assert result.layers[0].units[0].concept == "red" and 3 not in sum(result.layers[0].top_images["index"], [])


def colour_masks(folder, photo):
    """A user mask folder: each photo's strongly red, yellow, blue and white pixels."""
    import cv2
    from PIL import Image

    from core.io.images import load_image

    images, masks = folder / "images", folder / "masks"
    images.mkdir()
    rules = {"red": lambda h, s, v: ((h < 10) | (h > 170)) & (s > 120) & (v > 60),
             "yellow": lambda h, s, v: (h >= 20) & (h < 35) & (s > 120) & (v > 80),
             "blue": lambda h, s, v: (h >= 95) & (h < 130) & (s > 100) & (v > 50),
             "white": lambda h, s, v: (s < 30) & (v > 220)}
    for name in PHOTOS:
        rgb = load_image(photo(name))
        stem = name.rsplit(".", 1)[0]
        Image.fromarray(rgb).save(images / f"{stem}.png")
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(int)
        for concept, rule in rules.items():
            (masks / concept).mkdir(parents=True, exist_ok=True)
            mask = rule(hsv[..., 0], hsv[..., 1], hsv[..., 2])
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / concept / f"{stem}.png")
    return images, masks


def test_the_dissect_command_writes_its_files_and_names_a_bad_image(tiny_cli, tmp_path, capsys):
    import json

    import main
    from tests.conftest import photo_path

    images, masks = colour_masks(tmp_path, photo_path)
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main.main(["dissect", "--model", "tiny", "--concepts", str(masks), "--images", str(images),
                      "--out", str(out), "--sparsities", "0,50", "--criteria", "l1", "--quiet",
                      "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "broken.png" in err and err.count("error:") == 1
    for name in ("dissection.json", "concepts.png", "sweep.json", "sweep.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "dissection.json").read_text())
    assert result["images"] == len(PHOTOS) + 1 and len(result["skipped"]) == 1
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(p["criterion"], p["sparsity"]) for p in sweep["points"]] == [("l1", 0.0), ("l1", 50.0)]
    # At 0 % the sweep's point is the model as dissected; the brightest pixels drive the tiny
    # net's non-negative first layer hardest, so some of its units detect white.
    units = result["summary"][0]["units"]
    assert sweep["points"][0]["detectors"] == result["summary"][0]["detectors"] > 0
    assert all(p["agreement"] is not None and 0 <= p["detectors"] <= units for p in sweep["points"])


def test_a_dissection_is_matched_to_the_model_by_what_it_is_not_by_its_name(tmp_path):
    import json

    from core.models.loading import load_model
    from tests.conftest import tiny_net

    # A user's model file, dissected through its SPEC and opened again through a card naming it.
    (tmp_path / "color_units.py").write_text(
        "from torch import nn\n\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), "
        "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))\n")
    torch.save(colour_net().state_dict(), tmp_path / "colour.pt")
    (tmp_path / "card.toml").write_text('source = "color_units.py:make"\nweights = "colour.pt"\n'
                                        'name = "color-units"\ninput_size = 64\nresize = 64\n')
    spec = f"{tmp_path / 'color_units.py'}:make"
    dissected = load_model(spec, weights=tmp_path / "colour.pt", input_size=SIZE, resize=SIZE, device="cpu")
    data = json.loads(json.dumps(run(iter_dissect(dissected, patch_source(4), ["0"], batch=4)).to_json()))
    dissection = Dissection.from_json(data)
    card = load_model(str(tmp_path / "card.toml"), device="cpu")
    assert card.name == "color-units" != dissected.name
    assert dissection.mismatch(card) is None and dissection.mismatch(dissected) is None

    # What differs is said.
    smaller = load_model(str(tmp_path / "card.toml"), input_size=32, resize=32, device="cpu")
    assert dissection.mismatch(smaller) == (f"dissects {dissected.name}, not the current model color-units: "
                                            "input size 64 px (current: 32 px)")
    retrained = colour_net()
    with torch.no_grad():
        retrained[0].bias[1] = 0.5
    torch.save(retrained.state_dict(), tmp_path / "retrained.pt")
    other = load_model(str(tmp_path / "card.toml"), weights=tmp_path / "retrained.pt", device="cpu")
    assert dissection.mismatch(other).endswith("color-units: other weights")
    assert dissection.mismatch(as_model(tiny_net())).endswith(
        "architecture Sequential (current: Tiny), other weights")

    # A dissection.json from before identities were recorded is matched by the model's name.
    del data["identity"]
    older = Dissection.from_json(data)
    assert older.mismatch(dissected) is None
    assert older.mismatch(card) == f"dissects {dissected.name}, not the current model color-units"
