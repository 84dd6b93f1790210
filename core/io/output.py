"""Writing results so that nothing is lost or mixed.

- One result folder per input, never shared (result_names).
- A result folder is built under a hidden temporary name and renamed into place when complete
  (staged_folder); a failure or an interrupt removes it, so no folder that looks complete is
  ever partial. An existing result folder is refused unless overwrite is asked for, and is then
  replaced whole.
- Single files are written under a temporary name and renamed (atomic_file): a full disk leaves
  the old file as it was.
- One PruneScope run at a time writes into an output folder (locked).
"""
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

from core.errors import OutputError

PARTIAL_PREFIX = ".partial-"  # temporary names: hidden, and plainly not results
LOCK_NAME = ".prunescope.lock"


def result_names(paths) -> list[str]:
    """A distinct folder name for each input: its stem; where stems collide, the stem and its
    extension (img-tiff), then its parent folder too (img-tiff-b), then its place in the list.
    Names are compared without case, for case-insensitive file systems."""
    paths = [Path(p) for p in paths]
    levels = [0] * len(paths)

    def name(i: int) -> str:
        path = paths[i]
        stem = path.stem.lstrip(".") or path.name.lstrip(".") or "image"  # "..png" is not "."
        ext = path.suffix.lstrip(".").lower()
        parent = path.absolute().parent.name.lstrip(".") or "root"
        return [stem, f"{stem}-{ext}", f"{stem}-{ext}-{parent}", f"{stem}-{i + 1}"][levels[i]]

    while True:
        seen: dict[str, list[int]] = {}
        for i in range(len(paths)):
            seen.setdefault(name(i).lower(), []).append(i)
        clashes = [i for group in seen.values() if len(group) > 1 for i in group if levels[i] < 3]
        if not clashes:
            return [name(i) for i in range(len(paths))]
        for i in clashes:
            levels[i] += 1


def output_folder(path) -> Path:
    """The output folder, created if needed; one clear error if it cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot create the output folder ({err.strerror or err})") from None
    return path


@contextmanager
def locked(folder):
    """Hold the output folder for this run; another run writing there is refused, not mixed in."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): runs are not guarded against each other
        yield
        return
    folder = Path(folder)
    try:
        handle = open(folder / LOCK_NAME, "a")
    except OSError as err:
        raise OutputError(f"{folder}: cannot write here ({err.strerror or err})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{folder}: another PruneScope run is writing here; wait for it "
                              "or choose another output folder") from None
        yield  # the lock goes with the file: also when the process is killed


@contextmanager
def staged_folder(final, overwrite: bool = False):
    """Yield a temporary folder next to `final`; when the block ends normally it becomes `final`
    (an old `final` is replaced whole, if overwrite), otherwise it is removed."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputError(f"{final}: already exists (--overwrite replaces it)")
    staging = None
    try:  # from the folder's making on: an interrupt right after it must not leave it behind
        while staging is None:
            staging = final.parent / f"{PARTIAL_PREFIX}{final.name}-{secrets.token_hex(4)}"
            try:
                staging.mkdir()
            except FileExistsError:  # another's: not ours to remove
                staging = None
            except OSError as err:
                staging = None
                raise OutputError(f"{final.parent}: cannot write here ({err.strerror or err})") from None
        yield staging
        _publish(staging, final, overwrite)
    except BaseException:  # failures and interrupts alike: nothing half-written stays behind
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, final: Path, overwrite: bool) -> None:
    if not final.exists():
        staging.rename(final)
        return
    if not overwrite:
        raise OutputError(f"{final}: already exists (--overwrite replaces it)")
    old = _new_folder(final.parent, f"old-{final.name}")
    os.replace(final, old / final.name)  # aside first: the new one is never mixed with the old
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path):
    """Yield a temporary path (same folder and suffix) to write; it replaces `path` only once the
    block ends normally, so a failed or interrupted write leaves the old file untouched."""
    path = Path(path)
    temp = path.with_name(f"{PARTIAL_PREFIX}{path.stem}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _new_folder(parent: Path, label: str) -> Path:
    """A new hidden folder with a random name; made with os.mkdir, so it gets the usual
    permissions (tempfile's folders are private to the user)."""
    while True:
        folder = parent / f"{PARTIAL_PREFIX}{label}-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def write_text(path, text: str) -> Path:
    with atomic_file(path) as temp:
        temp.write_text(text)
    return Path(path)


def save_figure(fig, path, **savefig_options) -> Path:
    """A matplotlib figure written whole (for files that go straight into an output folder)."""
    with atomic_file(path) as temp:
        fig.savefig(temp, **savefig_options)
    return Path(path)
