"""Concepts in the app: a real dissection of the embedded model labels the channel tiles, and a
clicked channel shows its conditional map and its top images from the photo's folder."""
import json

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from tests.test_dissection import PHOTOS, colour_masks
from tests.test_gui import lean_window, settings_dir, wait_until  # noqa: F401

LAYER = "_relu1"  # the embedded model's last activation (7 x 7 maps)


@pytest.fixture(scope="module")
def dissection_file(lite0, tmp_path_factory):
    import json

    from core.dissection.concepts import mask_folder
    from core.dissection.dissect import iter_dissect
    from core.progress import run
    from tests.conftest import photo_path

    folder = tmp_path_factory.mktemp("concepts")
    images, masks = colour_masks(folder, photo_path)
    result = run(iter_dissect(lite0, mask_folder(images, masks), [LAYER], batch=5))
    assert result.layers[0].detectors(), "no unit of the embedded model detects a colour"
    path = folder / "dissection.json"
    path.write_text(json.dumps(result.to_json()))
    return path, images


def test_a_dissection_labels_the_tiles_and_a_click_shows_the_channel(qapp, settings_dir, dissection_file,  # noqa: F811
                                                                     tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the top images' cache
    path, images = dissection_file
    window = lean_window([images / "coffee.png"])
    try:
        wait_until(qapp, window.explain.is_complete)
        masks = window.explain.masks
        assert window.open_dissection(path)
        wait_until(qapp, lambda: masks.layer() is not None and masks.layer().name == LAYER)
        assert masks._labels, "no tile carries a concept"
        assert masks.concepts_label.isVisible()
        wait_until(qapp, lambda: masks.concepts_label.text().startswith("Concepts on the pathway"))
        # click the first labelled tile, as a user would
        label = masks._labels[0]
        scene = masks.tile_box.mapViewToScene(label.pos() + type(label.pos())(1.5, 1.5))
        point = masks.tile_canvas.mapFromScene(scene)
        channel = masks.channel_index_at(scene)
        assert "detects" in masks.channel_at(scene)
        QTest.mouseClick(masks.tile_canvas.viewport(), Qt.MouseButton.LeftButton, pos=point)
        dialog = window.explain._channel_dialog
        wait_until(qapp, lambda: dialog is not None and dialog.isVisible())
        wait_until(qapp, lambda: dialog.map_picture.pixmap() is not None
                   and not dialog.map_picture.pixmap().isNull())
        wait_until(qapp, lambda: not dialog.crops[0].pixmap().isNull())
        assert f"channel {channel}" in dialog.header.text() and "Detects" in dialog.concept.text()
        assert sum(not c.pixmap().isNull() for c in dialog.crops) == len(PHOTOS)
        assert len(list((tmp_path / "cache" / "prunescope" / "reference").glob("*.json"))) == 1
        shot = dialog.grab().toImage()
        pixels = np.array([shot.pixelColor(x, y).value() for x in range(0, shot.width(), 7)
                           for y in range(0, shot.height(), 7)])
        assert pixels.std() > 20  # pictures, not a blank dialog
        dialog.grab().save(str(tmp_path / "channel.png"))
        # the same model under another name (a model card's) is the same model ...
        data = json.loads(path.read_text())
        renamed = tmp_path / "renamed.json"
        renamed.write_text(json.dumps({**data, "model": "lite0-card"}))
        assert window.open_dissection(renamed)
        # ... and another model's dissection is refused, saying what differs
        other = tmp_path / "other.json"
        other.write_text(json.dumps({**data, "model": "resnet18",
                                     "identity": {**data["identity"], "architecture": "ResNet"}}))
        assert not window.open_dissection(other)
        assert "not the current model" in window.statusBar().currentMessage()
        assert "architecture ResNet (current: " in window.statusBar().currentMessage()
        # computed in the Evaluate tab, it reaches the Explain tab's tiles
        box = next(window.tabs.widget(i) for i in range(window.tabs.count())
                   if hasattr(window.tabs.widget(i), "dissect")).dissect
        box.concepts.setText(str(images.parent / "masks"))
        box.images.setText(str(images))
        before = window.explain.dissection
        box.run_button.click()
        wait_until(qapp, lambda: window.explain.dissection is not before)
        assert "units" in box.message.text() and window.explain.dissection.images == len(PHOTOS)
    finally:
        window.close()
