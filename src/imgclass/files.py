"""Writing files that survive a kill at any moment: temporary name in the same folder, fsync, rename.

Files get the mode a plain ``open(path, "w")`` would give them (``0o666`` less the umask), not
``tempfile``'s private ``0o600``: results, reports and checkpoints are meant to be shared.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "write_json", "umask"]


def umask() -> int:
    """The process umask, read without changing it where the system allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(old)
    return old


def atomic_write(path: str | os.PathLike, data: bytes | str | None = None, *,
                 writer: Callable[[str], None] | None = None, fsync: bool = True) -> Path:
    """Write ``data`` (bytes or text) or call ``writer(tmp_path)`` to fill a temporary file, then rename it to
    ``path``. A reader sees the old file or the new one, never a part; on any error the temporary file goes."""
    if (data is None) == (writer is None):
        raise TypeError("atomic_write needs exactly one of data and writer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mode = 0o666 & ~umask()
    try:
        os.fchmod(fd, mode)
        if writer is None:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        else:
            os.close(fd)
            writer(tmp)
            os.chmod(tmp, mode)  # a writer may replace the file (safetensors does), with a mode of its own
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Strict JSON (no NaN), indented, written atomically."""
    return atomic_write(path, json.dumps(obj, indent=1, allow_nan=False))
