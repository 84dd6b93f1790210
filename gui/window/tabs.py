"""Extra tabs of the main window, beside "Explain". Each helper adds one line here.

    extra_tabs(context) -> list[(title, widget)]

`context` is the window's gui.parts.context.AppContext: a tab listens to its signals (image_changed,
model_changed, target_changed, engine_changed), reads current_model() / current_engine() /
current_image_path(), and runs every computation with context.run_job(...). A tab must not import
torch at module top (the window appears before torch is loaded); import core modules inside jobs.
"""
from PySide6.QtWidgets import QWidget


def extra_tabs(context) -> list[tuple[str, QWidget]]:
    from gui.evaluate.tab import EvaluateTab
    from gui.pruning.tab import PruningTab

    return [
        ("Model pruning", PruningTab(context)),
        ("Evaluate", EvaluateTab(context)),
    ]
