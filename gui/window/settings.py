"""The app's settings: one INI file per user (QSettings), and the lists of recent items in it."""
from PySide6.QtCore import QSettings

RECENT_LIMIT = 10


def app_settings() -> QSettings:
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "PruneScope", "prunescope")


def as_list(value) -> list[str]:
    """QSettings gives a str for a one-item list and None for none."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def remember(settings: QSettings, key: str, item: str) -> None:
    """Put item first in the list of recent ones under key (at most RECENT_LIMIT)."""
    recent = [r for r in as_list(settings.value(key)) if r != item]
    settings.setValue(key, [item, *recent][:RECENT_LIMIT])
