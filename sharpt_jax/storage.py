"""Files that readers may open at any moment: atomic writes and JSON reads.

Every result, record, table and export of the project is written through `replacing` (or `write_text` /
`write_json` on top of it): the content goes to a temporary file beside the target, which is renamed over it
once complete, so a reader (another process, a later resume, a report) never sees half a file, and a run killed
mid-write leaves the previous version intact. Writers on several hosts call these on the first host only.
"""

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; once the block ends without an error, it is renamed to `path`.

        with storage.replacing(out / "table.npz") as tmp:
            np.savez(tmp, ...)

    Creates the parent folder. The temporary name carries the process id, so two processes writing the same
    file (two runs filling one cache folder) never share a temporary; the last rename wins, whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` to `path` atomically; returns the path."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, value) -> Path:
    """`value` as indented JSON with a trailing newline, written atomically."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: str | os.PathLike, default=None):
    """The JSON content of `path`, or `default` when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default
