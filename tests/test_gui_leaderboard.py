"""The Evaluate tab shows an evaluate folder's leaderboard as a sortable table."""
import json

from PySide6.QtCore import Qt

from core.evaluation.leaderboard import rows
from gui.evaluate.drawing import ResultsView


def test_results_view_shows_the_leaderboard_sortable(qtbot, tmp_path):
    summary = {"gradient": {"deletion_auc": 0.07, "insertion_auc": 0.06, "deletion_auc_ci": [0.01, 0.14]},
               "pathway-gradient": {"deletion_auc": 0.06, "insertion_auc": 0.12},
               "random": {"deletion_auc": 0.071, "insertion_auc": 0.062}}
    metrics, table = rows(summary)
    (tmp_path / "results.json").write_text(json.dumps(
        {"images": 3, "dataset": "photos", "methods": summary,
         "leaderboard": {"metrics": metrics, "rows": table}}))
    view = ResultsView()
    qtbot.addWidget(view)
    view.load(tmp_path)
    shown = view.leaderboard
    assert not shown.isHidden() and shown.rowCount() == 3
    assert [shown.item(i, 1).text() for i in range(3)] == ["pathway-gradient", "gradient", "random"]
    assert "interval" in shown.item([shown.item(i, 1).text() for i in range(3)].index("gradient"), 2).toolTip()
    shown.sortByColumn(3, Qt.SortOrder.DescendingOrder)  # insertion AUC, best first
    assert [shown.item(i, 1).text() for i in range(3)] == ["pathway-gradient", "random", "gradient"]
    (tmp_path / "results.json").write_text(json.dumps({"images": 1, "dataset": "x", "methods": {}}))
    view.load(tmp_path)
    assert shown.isHidden()
