"""Finished items kept on disk, so that a long run that is stopped (killed, out of memory, a
closed lid) goes on where it was: the same command computes only what is missing.

Each item's record is one file in OUT/records/, written under a temporary name and renamed
(a SIGKILL loses at most the items in flight). OUT/records/run.json holds the settings the
records were made with; a run with other settings is refused, naming the first that differs,
unless it overwrites. A record is a dict of plain values and numpy arrays: the JSON part and the
arrays go into one .npz without pickles.
"""
import hashlib
import json
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from core.errors import PruneScopeError
from core.io.output import PARTIAL_PREFIX, atomic_file

FOLDER = "records"
SETTINGS_FILE = "run.json"
ADDED_LATER = {"method_params": {}}  # settings older runs do not record: what they ran with


class RecordStore:
    def __init__(self, out, settings: dict, overwrite: bool = False, check: bool = True):
        """settings: what the records depend on, by name (methods, model, seed, ...). check=False
        for the processes beside the first under torchrun: the first checks and writes, holding
        the output folder's lock (core.io.output.locked)."""
        self.folder = Path(out) / FOLDER
        self.settings = json.loads(json.dumps(settings))  # as it reads back
        if check:
            self._check(overwrite)

    def _check(self, overwrite: bool) -> None:
        path = self.folder / SETTINGS_FILE
        if overwrite and self.folder.exists():
            shutil.rmtree(self.folder)
        for stale in self.folder.glob(f"{PARTIAL_PREFIX}*"):  # a killed run's write in flight
            stale.unlink(missing_ok=True)
        if path.is_file():
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):
                held = None
            if not isinstance(held, dict):
                raise PruneScopeError(f"{path}: unreadable; --overwrite starts the run again")
            for key, value in self.settings.items():
                if held.get(key, ADDED_LATER.get(key)) != value:
                    raise PruneScopeError(
                        f"{self.folder.parent} holds a run with another {key} ({_short(held.get(key))}, now "
                        f"{_short(value)}): run it with the same settings to go on, or start again "
                        "(--overwrite)")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as temp:
            temp.write_text(json.dumps(self.settings, indent=2))

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.folder / f"{digest}.npz"

    def get(self, key: str) -> dict | None:
        """The record of `key`, or None when it is not finished (or its file is damaged)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                head = json.loads(str(data["json"]))
                arrays = {name: data[name] for name in data.files if name != "json"}
            return _decode(head["record"], arrays) if head.get("key") == key else None
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            return None  # computed again, and the file replaced

    def put(self, key: str, record: dict) -> None:
        arrays: dict[str, np.ndarray] = {}
        head = {"key": key, "record": _encode(record, arrays)}
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(self._path(key)) as temp:
            with open(temp, "wb") as handle:
                np.savez(handle, json=np.array(json.dumps(head)), **arrays)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _encode(value, arrays: dict):
    """JSON-ready `value`, its arrays moved into `arrays` under a reference."""
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"__array__": name}
    if is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": type(value).__name__, "fields": _encode(asdict(value), arrays)}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value, arrays: dict):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        return arrays[value["__array__"]]
    if "__dataclass__" in value:
        from core.evaluation.sanity import SanityResult  # the one dataclass records hold

        if value["__dataclass__"] != SanityResult.__name__:
            raise ValueError(f"unknown record type {value['__dataclass__']}")
        return SanityResult(**_decode(value["fields"], arrays))
    return {_decode(k, arrays): _decode(v, arrays) for k, v in value["__dict__"]}
