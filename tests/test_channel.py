"""The in-process byte channel (``recovery/backup/stream/channel.py``) and ``produced(..., in_process=True)``,
which a restore's decrypting thread uses to hand the plaintext to the extractor."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from typing import BinaryIO

import pytest

from recovery.backup.stream.channel import Channel
from recovery.backup.stream.pipe import produced


def test_bytes_arrive_whole_and_in_order_across_many_wraps_of_the_ring() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    channel = Channel(capacity=64 * 1024 + 3)   # an odd size: writes and reads straddle the wrap
    rng = random.Random(7)
    sizes = [rng.randint(1, 200_000) for _ in range(200)]

    def write() -> None:
        writer, pos, i = channel.writer(), 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            writer.write(memoryview(data)[pos:pos + n])
            pos, i = pos + n, i + 1
        writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    reader, got = channel.reader(), bytearray()
    while piece := reader.read(rng.randint(1, 150_000)):
        got += piece
    thread.join()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest() and len(got) == len(data)


def test_a_reader_that_stops_early_stops_the_writer_with_a_broken_pipe() -> None:
    channel = Channel(capacity=1024)
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            channel.writer().write(b"x" * 1_000_000)   # far more than the ring holds
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    reader = channel.reader()
    assert reader.read(10) == b"x" * 10
    reader.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(outcome[0], BrokenPipeError)


def test_produced_in_process_hands_over_everything_and_the_writers_error_wins() -> None:
    data = os.urandom(5 * 1024 * 1024)

    def write_all(out: BinaryIO) -> None:
        for i in range(0, len(data), 300_000):
            out.write(data[i:i + 300_000])

    with produced(write_all, in_process=True) as reader:
        assert reader.read() == data

    def fail_midway(out: BinaryIO) -> None:
        out.write(b"partial")
        raise ValueError("chunk 3 failed authentication")

    with pytest.raises(ValueError, match="chunk 3 failed authentication"), \
            produced(fail_midway, in_process=True) as reader:
        reader.read()
        raise RuntimeError("the consumer's own error is only a consequence")
