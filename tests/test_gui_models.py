"""The app on a user's own models: a 10-class ResNet-18 with its labels, and Open model… with an
error shown in the dialog, then a grayscale CNN from a .py file (offscreen, small inputs)."""
import pytest
import torch
import torchvision
from PySide6.QtCore import QSettings
from test_any_model import GRAY_NET, SAMPLE
from test_gui import wait_until

from core.models.sources import ModelCard


@pytest.fixture
def user_model(tmp_path):
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    (tmp_path / "labels.txt").write_text("\n".join(f"part-{i}" for i in range(10)))
    (tmp_path / "gray_net.py").write_text(GRAY_NET)
    return tmp_path, ModelCard(source="torchvision:resnet18", weights=str(tmp_path / "r18.pt"),
                               labels=str(tmp_path / "labels.txt"), input_size=64, resize=64)


@pytest.mark.slow
def test_app_explains_a_user_model_and_opens_another(qapp, user_model):
    from gui.window.main_window import MainWindow

    folder, card = user_model
    window = MainWindow([SAMPLE], model=card)
    window.explain.curve_steps = 4
    window.explain.sweep_sparsities = (0, 50)
    window.show()
    try:
        wait_until(qapp, window.explain.is_complete)
        shown = [window.explain.controls.top5.item(i).text()
                 for i in range(window.explain.controls.top5.count())]
        assert len(shown) == 5 and all("part-" in text for text in shown)
        assert "part-" in window.explain.controls.prediction.text()
        first = window.context.current_model()
        recent = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "PruneScope",
                           "prunescope").value("models/recent")
        assert recent and str(recent if isinstance(recent, str) else recent[0]).endswith(".toml")

        window.choose_model()
        dialog = window.model_dialog
        dialog.spec.setText(f"{folder / 'gray_net.py'}:broken")
        dialog.buttons.accepted.emit()
        wait_until(qapp, lambda: "raised" in dialog.error.text() and window.context.is_idle(), 120_000)
        assert "ValueError: no such checkpoint" in dialog.error.text() and dialog.isVisible()
        assert window.context.current_model() is first

        dialog.spec.setText(f"{folder / 'gray_net.py'}:build")
        dialog.input_size.setValue(48)
        dialog.resize_to.setValue(48)
        dialog.buttons.accepted.emit()
        wait_until(qapp, lambda: not dialog.isVisible(), 120_000)
        model = window.context.current_model()
        assert model.channels == 1 and model.input_size == 48
        wait_until(qapp, lambda: window.explain.is_complete()
                   and window.context.current_engine().model is model)
        assert window.model_box.currentText() == "gray_net.py_build"
        assert window.explain.controls.top5.item(0).text().count("class ") == 1
    finally:
        window.close()
