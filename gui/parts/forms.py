"""Form pieces the tabs share."""
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton


def folder_row(line: QLineEdit) -> QHBoxLayout:
    """A folder's line and, beside it, a button that picks the folder into it."""
    button = QPushButton("…")
    button.setFixedWidth(28)

    def browse() -> None:
        folder = QFileDialog.getExistingDirectory(line, "Folder", line.text())
        if folder:
            line.setText(folder)

    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.addWidget(line, 1)
    row.addWidget(button)
    return row
