"""Atomic file writes, used wherever a file is rewritten while someone may read it.

The data goes to a temporary file beside the target, which is renamed over the target only
once complete: a reader, another worker, or a run killed mid-write sees the old file or the
new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_write(path: os.PathLike | str) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
