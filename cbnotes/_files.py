"""Atomic file writes and folder checks: a reader never sees a half-written file, a failure
leaves none, and a place that cannot be written is reported in one line that names it.

Every write of the package goes through :func:`atomic_path` (or the ``write_*_atomic``
helpers built on it). An operating-system error while writing (permission denied, read-only
file system, no space left, a file where a folder should be) becomes a :class:`PlaceError`
whose message names the path, says what was wrong and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: errno -> (what was wrong, what to do), for the messages of :class:`PlaceError`.
_REASONS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "choose a place you can write to"),
    errno.EPERM: ("operation not permitted", "choose a place you can write to"),
    errno.EROFS: ("read-only file system", "choose a place on a writable disk"),
    errno.ENOSPC: ("no space left on device", "free some space or choose a place on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose a place on another disk"),
    errno.ENOTDIR: ("a part of its path is a file, not a folder", "choose another path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.EISDIR: ("it is a folder", "give the path of a file, not of a folder"),
    errno.EEXIST: ("a file is in the way of a folder on its path", "choose another path"),
}


class PlaceError(OSError):
    """A file or folder cannot be read or written where it must be; the message says why and
    what to do (``why`` holds the short reason, e.g. "permission denied")."""

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why


def describe_os_error(err: OSError) -> tuple[str, str]:
    """(What was wrong, what to do) for an OSError, in words."""
    if err.errno in _REASONS:
        return _REASONS[err.errno]
    return (err.strerror or str(err) or type(err).__name__, "choose another place")


def _write_error(target: Path, err: OSError) -> PlaceError:
    """The PlaceError for a failed write of ``target``."""
    why, fix = describe_os_error(err)
    return PlaceError(f"cannot write {target} ({why}); {fix}", why)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_all(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (where a full disk shows up)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The file gets the permissions of an ordinary new file (0666 less the umask), not the
    0600 of ``tempfile.mkstemp``. On an exception the temporary file is removed. An OSError
    of the write itself (not, say, of reading a source file inside the block) is raised as a
    :class:`PlaceError` naming ``path``.
    """
    target = Path(path)
    if target.is_dir():
        raise PlaceError(
            f"cannot write {target}: it is a folder; give the path of a file, not of a folder",
            "it is a folder",
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise _write_error(target, err) from err
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except PlaceError:
        raise
    except OSError as err:
        if err.filename not in (None, str(tmp_path), str(target)):
            raise  # about another file (a source read inside the block): not ours to reword
        raise _write_error(target, err) from err
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        _write_all(tmp, data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text_if_changed(path: str | os.PathLike[str], text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless the file already holds it; True if written."""
    target = Path(path)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if target.read_text(encoding="utf-8") == text:
            return False
    write_text_atomic(target, text)
    return True


def check_out_dir(
    path: str | os.PathLike[str],
    *,
    write: bool = True,
    what: str = "results folder",
    hint: str = "check the path",
) -> Path:
    """Return ``path`` after checking it is a folder this process can use, or raise.

    With ``write`` the folder is created if missing and a temporary file is written, flushed
    and removed in it, so that a read-only place or a full disk is found before any work is
    done. Without it the folder must exist and be readable (``hint`` ends the message when it
    does not exist). Raises :class:`PlaceError` (or FileNotFoundError) naming the folder.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise PlaceError(
            f"{what} {folder} is a file, not a folder; give the path of a folder", "not a folder"
        )
    if not write:
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {folder} does not exist; {hint}")
        if not os.access(folder, os.R_OK | os.X_OK):
            raise PlaceError(
                f"cannot read {what} {folder} (permission denied); give a folder you can read",
                "permission denied",
            )
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why, fix = describe_os_error(err)
        raise PlaceError(f"cannot create {what} {folder} ({why}); {fix}", why) from err
    probe: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".cbnotes-write-probe.", suffix=".tmp")
        os.close(fd)
        probe = Path(name)
        _write_all(probe, b"cbnotes checks that this folder can be written\n")
    except OSError as err:
        why, fix = describe_os_error(err)
        raise PlaceError(f"cannot write to {what} {folder} ({why}); {fix}", why) from err
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                probe.unlink()
    return folder
