"""The data directory tar extractor (``recovery/backup/restore/untar.py``): what it writes and what it refuses.

The tars here are built with ``tarfile`` (the format's reference writer in the standard library); real
``pg_basebackup`` tars go through the same extractor in every restore test against a real server.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from recovery.backup.restore.untar import BUFFER, TarRefused, extract


def _tar(add: Callable[[tarfile.TarFile], None], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        add(tar)
    return buf.getvalue()


def _file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    tar.addfile(info)


class _Trickle(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read, as a pipe under load may."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:   # type: ignore[override]
        n = min(len(b), self.step, len(self.data) - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


FILES = {
    "PG_VERSION": b"15\n",
    "global/pg_control": os.urandom(8192),
    "base/1/1259": os.urandom(BUFFER * 2 + 1234),   # crosses the reused buffer twice, ends mid-block
    "base/1/empty": b"",
    "base/1/exact": os.urandom(512 * 3),            # no padding after it
    "pg_wal/archive_status/.keep": b"",
}


def _data_dir_tar() -> bytes:
    def add(tar: tarfile.TarFile) -> None:
        for name in ("global", "base", "base/1", "pg_wal", "pg_wal/archive_status", "empty_dir"):
            _dir(tar, name)
        for name, data in FILES.items():
            _file(tar, name, data)
    return _tar(add)


@pytest.mark.parametrize("step", [None, 7, 4096 + 3])
def test_extracts_files_and_directories_byte_for_byte_with_private_modes(tmp_path: Path, step: int | None) -> None:
    data = _data_dir_tar()
    stream = io.BufferedReader(_Trickle(data, step)) if step else io.BytesIO(data)
    root = tmp_path / "d"
    root.mkdir()
    written = extract(stream, root, None)   # type: ignore[arg-type]
    assert written == sum(len(v) for v in FILES.values())
    for name, content in FILES.items():
        path = root / name
        assert path.read_bytes() == content, name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (root / "empty_dir").is_dir() and stat.S_IMODE((root / "base/1").stat().st_mode) == 0o700
    rest = stream.read()   # the second end-of-archive block and tarfile's record padding, left to the caller
    assert len(rest) >= 512 and not any(rest)


def _refused(tmp_path: Path, data: bytes, match: str) -> Path:
    root = tmp_path / "d"
    root.mkdir()
    with pytest.raises(TarRefused, match=match):
        extract(io.BytesIO(data), root, None)
    return root


@pytest.mark.parametrize("name", ["../escape", "/etc/evil", "base/../../escape"])
def test_a_path_out_of_the_directory_is_refused(tmp_path: Path, name: str) -> None:
    _refused(tmp_path, _tar(lambda t: _file(t, name, b"hi")), "unsafe path")
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes) -> None:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("pg_tblspc/16400")
        info.type, info.linkname = kind, "/etc"
        tar.addfile(info)
    root = _refused(tmp_path, _tar(add), "unsupported entry")
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_name_extension_headers_are_refused(tmp_path: Path, fmt: int) -> None:
    _refused(tmp_path, _tar(lambda t: _file(t, "base/" + "x" * 120, b"hi"), fmt), "unsupported entry")


def test_a_second_entry_for_one_file_is_refused_and_the_first_kept(tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        _file(tar, "PG_VERSION", b"15\n")
        _file(tar, "PG_VERSION", b"99\n")
    root = _refused(tmp_path, _tar(add), "duplicate entry")
    assert (root / "PG_VERSION").read_bytes() == b"15\n"


def test_a_file_used_as_a_directory_is_refused(tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        _file(tar, "base", b"x")
        _file(tar, "base/1", b"y")
    _refused(tmp_path, _tar(add), "directory where a file is")


def test_a_symlink_planted_in_the_directory_is_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "d", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "base").symlink_to(outside)
    with pytest.raises(TarRefused, match="unexpected symlink"):
        extract(io.BytesIO(_tar(lambda t: _file(t, "base/1", b"y"))), root, None)
    assert list(outside.iterdir()) == []


def test_a_stream_cut_inside_a_member_or_before_the_end_block_is_refused(tmp_path: Path) -> None:
    whole = _data_dir_tar()
    header_and_some = 512 * 8 + 100   # inside one of the first files' bytes
    _refused(tmp_path, whole[:header_and_some], "truncated")
    one_file = _tar(lambda t: _file(t, "PG_VERSION", b"15\n"))
    (tmp_path / "d").rename(tmp_path / "first")
    _refused(tmp_path, one_file[:1024], "end-of-archive")   # header + data, no end blocks


def test_a_damaged_header_is_refused(tmp_path: Path) -> None:
    data = bytearray(_tar(lambda t: _file(t, "PG_VERSION", b"15\n")))
    data[0] ^= 0x01   # the name changes; the stored header checksum no longer matches
    root = _refused(tmp_path, bytes(data), "not a valid tar")
    assert list(root.iterdir()) == []


def test_a_directory_entry_with_a_size_is_refused(tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("base")
        info.type, info.size = tarfile.DIRTYPE, 3
        tar.addfile(info, io.BytesIO(b"abc"))
    _refused(tmp_path, _tar(add), "gives directory")


BIG = {   # written with O_DIRECT: whole pieces, the last one padded and the file truncated to its size
    "base/5/16396": os.urandom(BUFFER * 3 + 4095),
    "base/5/16397": os.urandom(BUFFER),            # exactly the threshold, no padding
    "base/5/16398": os.urandom(BUFFER + 1),
    "pg_wal/000000010000000000000003": os.urandom(BUFFER * 2),
}


def _big_tar() -> bytes:
    def add(tar: tarfile.TarFile) -> None:
        for name in ("base", "base/5", "pg_wal"):
            _dir(tar, name)
        for name, data in BIG.items():
            _file(tar, name, data)
    return _tar(add)


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_big_members_go_past_the_page_cache_and_end_byte_for_byte_at_their_size(
        tmp_path: Path, where: str) -> None:
    if where == "tmpfs":   # tmpfs refuses O_DIRECT: the same files, written through the page cache
        shm = Path("/dev/shm")
        if not shm.is_dir():
            pytest.skip("no /dev/shm here")
        base = Path(tempfile.mkdtemp(dir=shm))
    else:
        base = tmp_path
    root = base / "d"
    root.mkdir()
    try:
        assert extract(io.BufferedReader(_Trickle(_big_tar(), 4096 * 3 + 5)), root, None) == \
            sum(len(v) for v in BIG.values())   # type: ignore[arg-type]
        for name, content in BIG.items():
            assert (root / name).stat().st_size == len(content), name
            assert (root / name).read_bytes() == content, name
    finally:
        if where == "tmpfs":
            shutil.rmtree(base)
