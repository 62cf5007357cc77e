"""A local directory as a storage target (the staging copy, or a mounted volume)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from recovery.backup.storage.base import (
    DEFAULT_READ_CHUNK,
    GuardedWriter,
    Target,
    Writer,
    check_key,
    storage_failure,
)


class _LocalWriter(Writer):
    def __init__(self, target: str, dest: Path) -> None:
        self._target = target
        self._dest = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        # fsync before rename, then the directory, so a crash leaves either the old state or the whole file.
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._dest)
        dir_fd = os.open(self._dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalTarget(Target):
    kind = "local"
    size_is_cheap = True

    def __init__(self, path: str | os.PathLike[str], name: str = "local") -> None:
        self.name = name
        self.root = Path(path)

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    def open_writer(self, key: str) -> Writer:
        try:
            return GuardedWriter(self.name, key, _LocalWriter(self.name, self.path_for(key)))
        except OSError as exc:
            raise storage_failure(self.name, f"open {key}", exc) from None

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, key: str, chunk_size: int = DEFAULT_READ_CHUNK) -> Iterator[bytes]:
        try:
            f = self.path_for(key).open("rb")
        except OSError as exc:
            raise storage_failure(self.name, f"read {key}", exc) from None
        with f:
            while piece := f.read(chunk_size):
                yield piece

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        # In-progress writes are hidden dot files ending in .part; they are not backups.
        return sorted(n for n in names if n.startswith(prefix) and not _is_temp(n))


def _is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(".part")

