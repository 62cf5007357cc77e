"""Join a writer to a reader: an exporter writes a file object, the pipeline reads one."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO, cast

from recovery.backup.stream.channel import Channel

PIPE_SIZE = 1024 * 1024   # Linux's default pipe-max-size
_F_SETPIPE_SZ = 1031      # fcntl.F_SETPIPE_SZ on Linux


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Give a pipe a 1 MiB kernel buffer instead of 64 KiB (best effort: elsewhere than Linux, or with a
    lower ``/proc/sys/fs/pipe-max-size``, the default stays). With 64 KiB the writer and the reader take
    turns: the writer blocks whenever the reader is busy for a moment (issue 12: pg_basebackup into the
    backup pipeline, the decrypting writer into ``tarfile`` on a restore)."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", _F_SETPIPE_SZ), size)


@contextlib.contextmanager
def produced(write: Callable[[BinaryIO], object], *, in_process: bool = False) -> Iterator[BinaryIO]:
    """Run ``write(out)`` in a thread feeding a pipe; yield the pipe's read end.

    The exporters write to a file object, the pipeline reads one: a pipe joins them with a bounded
    kernel buffer, so memory stays flat. A writer error is re-raised when the block exits, and wins over
    the consumer's own error (which is then only its consequence). ``in_process``: a ``channel.Channel``
    instead of an OS pipe, for a consumer that reads in big pieces (a restore's extraction): no copy
    through the kernel. The exporters keep the OS pipe (not measured with the channel).
    """
    reader: BinaryIO
    writer: BinaryIO
    if in_process:
        channel = Channel()
        reader, writer = cast("BinaryIO", channel.reader()), cast("BinaryIO", channel.writer())
    else:
        read_fd, write_fd = os.pipe()
        widen_pipe(write_fd)
        reader, writer = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            write(writer)
        except BaseException as exc:  # handed to the consumer below
            failure.append(exc)
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    thread = threading.Thread(target=run, name="aegis-export", daemon=True)
    thread.start()
    try:
        yield reader
    except BaseException:
        reader.close()
        thread.join()
        # A consumer failing on a cut-short stream (e.g. "not a valid tar") is a symptom; the writer's
        # own error (a failed tag or checksum) is the cause. A broken pipe only means we stopped reading.
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0] from None
        raise
    reader.close()
    thread.join()
    if failure:
        raise failure[0]
