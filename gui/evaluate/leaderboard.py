"""The leaderboard of an `evaluate` results folder as a sortable table (click a header)."""
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem


class LeaderboardTable(QTableWidget):
    def __init__(self):
        super().__init__()
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.verticalHeader().hide()
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.hide()

    def show_leaderboard(self, leaderboard: dict | None) -> None:
        """results.json's "leaderboard" (metrics and rows), or None to hide the table."""
        self.setSortingEnabled(False)  # filling a sorted table moves rows under the writer
        if not leaderboard:
            self.setRowCount(0)
            self.hide()
            return
        metrics, rows = leaderboard["metrics"], leaderboard["rows"]
        heads = ["rank", "method", *(m.replace("_", " ") for m in metrics)]
        self.setColumnCount(len(heads))
        self.setHorizontalHeaderLabels(heads)
        self.setRowCount(len(rows))
        for i, row in enumerate(rows):
            cells = [row["rank"], row["method"], *(row.get(m) for m in metrics)]
            for j, value in enumerate(cells):
                item = QTableWidgetItem()
                # numbers as numbers, so that a click on a header sorts by value
                item.setData(Qt.ItemDataRole.DisplayRole, "–" if value is None else
                             value if isinstance(value, (int, str)) else round(float(value), 4))
                ci = row.get(f"{metrics[j - 2]}_ci") if j >= 2 else None
                if ci:
                    item.setToolTip(f"95 % bootstrap interval {ci[0]:.4f} to {ci[1]:.4f}")
                self.setItem(i, j, item)
        self.setSortingEnabled(True)
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.setMinimumHeight(min(400, 30 + 24 * len(rows)))
        self.show()
