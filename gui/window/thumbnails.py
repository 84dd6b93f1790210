"""The strip of the images in the current folder: click one to analyse it; Ctrl+←/→ step through."""
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QImageReader, QPixmap
from PySide6.QtWidgets import QListView, QListWidget, QListWidgetItem

from core.progress import Progress

THUMB = 56
MAX_THUMBNAILS = 500  # a folder of thousands is still listed; only this many get pictures


def folder_job(folder: Path, wanted: list[Path] | None = None):
    """On the worker: the images of a folder (or the files given) and small previews of them."""
    from core.io.images import list_images

    paths = list(wanted) if wanted else list_images(folder)
    yield Progress(0.0, f"listing {folder}")
    previews = []
    for i, path in enumerate(paths[:MAX_THUMBNAILS]):
        if i % 8 == 0:
            yield Progress(i / max(len(paths), 1), f"previews {i}/{len(paths)}")
        previews.append(_preview(path))
    return folder, paths, previews


def _preview(path: Path) -> QImage:
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    size = reader.size()
    if size.isValid() and size.width() > 0 and size.height() > 0:
        reader.setScaledSize(size.scaled(THUMB * 2, THUMB * 2, Qt.AspectRatioMode.KeepAspectRatio))
    return reader.read()  # a null image for files Qt cannot decode: the name is still listed


class ThumbnailStrip(QListWidget):
    image_chosen = Signal(object)  # Path

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setUniformItemSizes(True)
        self.setGridSize(QSize(THUMB + 34, THUMB + 22))
        self.setFixedHeight(THUMB + 34)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setToolTip("Images in this folder (Ctrl+← / Ctrl+→)")
        self.itemClicked.connect(lambda item: self.image_chosen.emit(item.data(Qt.ItemDataRole.UserRole)))
        self.folder: Path | None = None

    def set_images(self, folder: Path, paths: list[Path], previews: list[QImage]) -> None:
        self.folder = folder
        self.clear()
        for i, path in enumerate(paths):
            item = QListWidgetItem(_short(path.name))
            item.setToolTip(str(path))
            item.setData(Qt.ItemDataRole.UserRole, path)
            if i < len(previews) and not previews[i].isNull():
                item.setIcon(QPixmap.fromImage(previews[i]))
            self.addItem(item)

    def paths(self) -> list[Path]:
        return [self.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.count())]

    def mark_current(self, path: Path | None) -> None:
        for i in range(self.count()):
            if self.item(i).data(Qt.ItemDataRole.UserRole) == path:
                self.setCurrentRow(i)
                self.scrollToItem(self.item(i))
                return
        self.clearSelection()

    def neighbour(self, current: Path | None, step: int) -> Path | None:
        paths = self.paths()
        if not paths:
            return None
        if current not in paths:
            return paths[0]
        return paths[(paths.index(current) + step) % len(paths)]


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
