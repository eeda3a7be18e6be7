"""Atomic file writes, used wherever a file is rewritten while someone may read it.

The data goes to a temporary file beside the target, which is renamed over the target only
once complete: a reader, another worker, or a run killed mid-write sees the old file or the
new one, never half of one. A Ctrl-C that arrives mid-write waits until the file is in
place: raised inside a writer (torch.save's zip stream) it would otherwise surface as that
writer's own error and hide the interrupt the caller knows how to handle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back SIGINT during the block and raise KeyboardInterrupt once it ends.

    Signal handlers can only be set from the main thread; elsewhere (Ray workers' threads)
    the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_write(path: os.PathLike | str) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_deferred():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
