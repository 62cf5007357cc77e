"""Chunked authenticated encryption (AES-256-GCM) for backup streams.

Stream layout::

    header  = magic "AEGISBK1" | version u8 | key id (8 bytes) | chunk size u32 | nonce prefix (8 bytes)
              | created-at u64 (unix seconds)
    frame*  = length u32 | ciphertext + 16-byte tag

Chunk ``i`` uses nonce ``prefix || i`` (u32) and associated data ``sha256(header) || i || final``. Binding the
header hash stops frames being spliced between streams; binding the index catches reordered or duplicated
frames; binding the final flag means a stream cut at a frame boundary is reported as truncated instead of
being accepted as a shorter backup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import shlex
import stat
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"AEGISBK1"
VERSION = 1
KEY_BYTES = 32
TAG_BYTES = 16
DEFAULT_CHUNK_SIZE = 1024 * 1024
# A corrupt header must not make the reader allocate gigabytes for one frame.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
_HEADER = struct.Struct(">8sB8sI8sQ")
_LENGTH = struct.Struct(">I")
_MAX_CHUNKS = 2**32


class BackupKeyError(KeyError):
    """The backup key is missing, malformed or not the one a backup was made with."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a key problem deserves a plain sentence.
        return str(self.args[0]) if self.args else "backup key error"


class WrongKeyError(BackupKeyError):
    """The stream was encrypted under a different key id than the loaded key."""

    def __init__(self, expected_key_id: str, loaded_key_id: str) -> None:
        self.expected_key_id = expected_key_id
        self.loaded_key_id = loaded_key_id
        super().__init__(
            f"backup was encrypted with key id {expected_key_id} but the loaded key has id {loaded_key_id}; "
            f"load the key with id {expected_key_id} to restore it"
        )


class IntegrityError(Exception):
    """The stored stream is not what was written: altered, truncated, reordered or not a backup at all."""

    def __init__(self, message: str, chunk_index: int | None = None, reason: str = "tag") -> None:
        super().__init__(message)
        self.chunk_index = chunk_index
        self.reason = reason


@dataclass(frozen=True)
class BackupKey:
    key: bytes
    key_id: str

    def __repr__(self) -> str:
        # The repr ends up in logs and tracebacks; only the id is safe there.
        return f"BackupKey(key_id={self.key_id!r})"

    @classmethod
    def from_bytes(cls, key: bytes) -> BackupKey:
        if len(key) != KEY_BYTES:
            raise BackupKeyError(f"backup key must be {KEY_BYTES} bytes, got {len(key)}")
        return cls(key=bytes(key), key_id=key_id_for(key))


@dataclass(frozen=True)
class StreamHeader:
    version: int
    key_id: str
    chunk_size: int
    nonce_prefix: bytes
    created_at: int
    raw: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


def key_id_for(key: bytes) -> str:
    """A public fingerprint of the key: enough to pick the right key, useless for recovering it."""
    return hashlib.sha256(b"aegis-key-id" + key).hexdigest()[:16]


def _decode_key(text: str, source: str) -> bytes:
    text = text.strip()
    if len(text) == 2 * KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BackupKeyError(f"backup key from {source} is neither 64 hex characters nor base64") from None
    if len(raw) != KEY_BYTES:
        raise BackupKeyError(f"backup key from {source} decodes to {len(raw)} bytes; AES-256 needs {KEY_BYTES}")
    return raw


def _check_private(path: Path) -> None:
    """Refuse a key file that group or others may read (or write): like ssh with a private key.

    Anyone who can read it can decrypt every backup; say exactly which ``chmod`` fixes it.
    """
    try:
        mode = path.stat().st_mode  # follows a symlink: the file's own mode is what protects the key
    except OSError:
        return  # unreadable/missing: reported by the read that follows
    if mode & 0o077:
        raise BackupKeyError(
            f"backup key file {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"refusing to use it — run `chmod 600 {shlex.quote(str(path))}`")


def load_key(env_name: str = "AEGIS_BACKUP_KEY", key_file: str | os.PathLike[str] | None = None) -> BackupKey:
    """Load the 32-byte key from ``key_file`` if given, else from the environment (base64 or hex).

    Raises :class:`BackupKeyError` naming where it looked, never echoing the value.
    """
    if key_file is not None:
        path = Path(key_file)
        _check_private(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BackupKeyError(f"cannot read backup key file {path}: {exc.strerror}") from None
        # A key file may hold the raw 32 bytes or their text encoding.
        if len(data) == KEY_BYTES:
            return BackupKey.from_bytes(data)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise BackupKeyError(f"backup key file {path} is not 32 raw bytes, hex or base64") from None
        return BackupKey.from_bytes(_decode_key(text, f"file {path}"))
    value = os.environ.get(env_name)
    if not value:
        raise BackupKeyError(f"no backup key: set {env_name} (32 bytes as base64 or 64 hex characters) or a key file")
    return BackupKey.from_bytes(_decode_key(value, f"${env_name}"))


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">IB", index, 1 if final else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


class Encryptor:
    """Turns plaintext chunks into a header and length-prefixed GCM frames."""

    def __init__(self, key: BackupKey, chunk_size: int = DEFAULT_CHUNK_SIZE, created_at: int | None = None) -> None:
        if not isinstance(key, BackupKey) or len(key.key) != KEY_BYTES:
            raise BackupKeyError("Encryptor needs a BackupKey of 32 bytes (see load_key)")
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}")
        self.key_id = key.key_id
        self.chunk_size = chunk_size
        self._aead = AESGCM(key.key)
        self._prefix = secrets.token_bytes(8)
        self._header = _HEADER.pack(
            MAGIC, VERSION, bytes.fromhex(key.key_id), chunk_size, self._prefix,
            int(time.time() if created_at is None else created_at),
        )
        self._digest = hashlib.sha256(self._header).digest()
        self._index = 0
        self._finished = False

    @property
    def chunks(self) -> int:
        return self._index

    def header(self) -> bytes:
        return self._header

    def encrypt_chunk(self, data: bytes, final: bool) -> bytes:
        """Return one frame (length prefix + ciphertext + tag); the last chunk must have ``final=True``."""
        if self._finished:
            raise ValueError("stream already has its final chunk")
        if len(data) > self.chunk_size:
            raise ValueError(f"chunk of {len(data)} bytes exceeds chunk_size {self.chunk_size}")
        if self._index >= _MAX_CHUNKS:
            raise ValueError("too many chunks for one stream; use a larger chunk_size")
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index), data, _aad(self._digest, self._index, final))
        self._index += 1
        self._finished = final
        return _LENGTH.pack(len(sealed)) + sealed


def parse_header(raw: bytes) -> StreamHeader:
    if len(raw) < _HEADER.size:
        raise IntegrityError("stream is shorter than a backup header", None, "truncated")
    magic, version, key_id, chunk_size, prefix, created_at = _HEADER.unpack(raw[: _HEADER.size])
    if magic != MAGIC:
        raise IntegrityError("not an Aegis backup stream (bad magic)", None, "header")
    if version != VERSION:
        raise IntegrityError(f"unsupported backup format version {version}", None, "header")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"header has an impossible chunk size {chunk_size}", None, "header")
    return StreamHeader(version, key_id.hex(), chunk_size, prefix, created_at, bytes(raw[: _HEADER.size]))


HEADER_SIZE = _HEADER.size


class _ByteReader:
    """Exact-size reads over an iterator of arbitrarily sized byte pieces."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._it = iter(pieces)
        self._buf = bytearray()
        self._eof = False

    def _fill(self, n: int) -> None:
        while len(self._buf) < n and not self._eof:
            try:
                self._buf += next(self._it)
            except StopIteration:
                self._eof = True

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at end of stream."""
        self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def at_end(self) -> bool:
        self._fill(1)
        return not self._buf


class Decryptor:
    """Iterate over a stored stream's plaintext chunks, authenticating each before it is yielded.

    ``Decryptor(key, pieces)`` reads the header lazily on first iteration (or via :meth:`read_header`).
    Every failure raises :class:`IntegrityError` with the chunk index, or :class:`WrongKeyError`.
    """

    def __init__(self, key: BackupKey, pieces: Iterable[bytes]) -> None:
        self._key = key
        self._aead = AESGCM(key.key)
        self._reader = _ByteReader(pieces)
        self.header: StreamHeader | None = None
        self.chunks = 0

    def read_header(self) -> StreamHeader:
        if self.header is None:
            header = parse_header(self._reader.read(HEADER_SIZE))
            if header.key_id != self._key.key_id:
                raise WrongKeyError(header.key_id, self._key.key_id)
            self.header = header
        return self.header

    def __iter__(self) -> Iterator[bytes]:
        header = self.read_header()
        digest = header.digest
        max_frame = header.chunk_size + TAG_BYTES
        index = 0
        while True:
            raw_len = self._reader.read(_LENGTH.size)
            if not raw_len:
                raise IntegrityError(
                    f"stream is truncated: it ends before chunk {index} without a final chunk", index, "truncated"
                )
            if len(raw_len) < _LENGTH.size:
                raise IntegrityError(f"stream is truncated inside the length of chunk {index}", index, "truncated")
            (length,) = _LENGTH.unpack(raw_len)
            if not TAG_BYTES <= length <= max_frame:
                raise IntegrityError(f"chunk {index} has an impossible length {length}", index, "tag")
            sealed = self._reader.read(length)
            if len(sealed) < length:
                raise IntegrityError(f"stream is truncated inside chunk {index}", index, "truncated")
            # The writer marks only the last frame final, so "more bytes follow" tells us which AAD to expect.
            final = self._reader.at_end()
            plain = self._open(sealed, index, final, digest, header)
            self.chunks = index + 1
            yield plain
            if final:
                return
            index += 1

    def _open(self, sealed: bytes, index: int, final: bool, digest: bytes, header: StreamHeader) -> bytes:
        try:
            return self._aead.decrypt(_nonce(header.nonce_prefix, index), sealed, _aad(digest, index, final))
        except InvalidTag:
            pass
        raise self._diagnose(sealed, index, final, digest, header)

    def _diagnose(self, sealed: bytes, index: int, final: bool, digest: bytes, header: StreamHeader) -> IntegrityError:
        """Work out why a frame failed, to give the operator a precise message. Costs a few extra decrypts."""
        if self._try(sealed, index, not final, digest, header):
            if final:
                return IntegrityError(
                    f"stream is truncated: chunk {index} is the last one stored but not the final one", index + 1,
                    "truncated",
                )
            return IntegrityError(f"unexpected data after the final chunk {index}", index + 1, "trailing")
        for other in range(max(0, index - 16), index + 17):
            if other != index and any(self._try(sealed, other, f, digest, header) for f in (False, True)):
                return IntegrityError(
                    f"chunk {index} holds the data of chunk {other}: frames were reordered or duplicated", index,
                    "reordered",
                )
        return IntegrityError(f"chunk {index} failed authentication: the stored data was altered", index, "tag")

    def _try(self, sealed: bytes, index: int, final: bool, digest: bytes, header: StreamHeader) -> bool:
        try:
            self._aead.decrypt(_nonce(header.nonce_prefix, index), sealed, _aad(digest, index, final))
        except InvalidTag:
            return False
        return True
