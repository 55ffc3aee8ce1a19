"""Every path the project reads or writes, local or on an object store, and files that readers may open at any
moment: atomic writes and JSON reads.

    folder = storage.path(workdir)            # pathlib.Path for a local folder; epath.Path for gs://, s3://, ...
    storage.write_json(folder / "eval" / "best.json", best)

`path` turns a string into a path object with pathlib's interface: a local one stays a plain `pathlib.Path`
(fast, no extra layer), a URI (`gs://bucket/x`, also s3://, az://) becomes an etils `epath.Path`, the layer Orbax
already writes checkpoints through. epath reaches GCS through TensorFlow's file system (tf.io.gfile) when
TensorFlow is installed, as here, and through fsspec (gcsfs) when `EPATH_USE_TF=0`. Code that reads or writes
through these objects (`p.open()`, `p.read_text()`, `p.glob()`, `p / "x"`, `rmtree`) works on both;
`open(p)`, `shutil`, `os.*` and `p.absolute()` (which turns `gs://b/x` into `/cwd/gs:/b/x`) do not.

Atomic writes. Every result, record, table and export of the project is written through `replacing` (or
`write_text` / `write_json` on top of it), so that a reader (another process, a later resume, a report) never
sees half a file, and a run killed mid-write leaves the previous version intact:
  - on a local disk or NFS the content goes to a temporary file beside the target, renamed over it once
    complete (rename is atomic there);
  - on an object store a rename is a copy and a delete, not atomic, and there are no partial objects: an upload
    becomes visible whole when it completes, or not at all, and replaces the previous object in one step (GCS
    gives strong read-after-write consistency). So the content is written to a local temporary file and
    uploaded to the target in one upload once complete: a reader sees the previous object or the new one.
    What an object store cannot give is an atomic folder (a reader listing it may see some of a folder's new
    objects and not others); Orbax handles that for checkpoints with a commit marker, and every other file
    here is complete on its own.
Writers on several hosts call these on the first host only.
"""

import contextlib
import fnmatch
import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator

from etils import epath

# pathlib.Path for local paths, epath.Path for URIs: both have pathlib's interface.
Path = pathlib.Path | epath.Path


def is_local(path: str | os.PathLike) -> bool:
    """Whether `path` is a local (or NFS) path, not a URI such as gs://bucket/x."""
    return "://" not in os.fspath(path)


def path(value: str | os.PathLike) -> Path:
    """`value` as a path object: pathlib.Path (with ~ expanded) when local, epath.Path for a URI."""
    return pathlib.Path(value).expanduser() if is_local(value) else epath.Path(value)


def absolute(value: str | os.PathLike) -> Path:
    """`value` as an absolute, normalised path (from the current folder: "a/../b" and "./b" are one) when local;
    a URI unchanged. Use it where a path is recorded for a later reader (a checkpoint's metadata, an adapter)."""
    return pathlib.Path(os.path.abspath(path(value))) if is_local(value) else path(value)


def version(file: Path) -> tuple[int, int]:
    """(modification time, size) of `file`: what changes when it is rewritten (a cache key of its content)."""
    if is_local(file):
        stat = os.stat(file)
        return stat.st_mtime_ns, stat.st_size
    stat = file.stat()
    return stat.mtime, stat.length


def sha256(file: Path) -> str:
    """The sha256 hex digest of `file`'s bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def files(folder: Path, name: str = "*") -> list[Path]:
    """Every file named `name` (a glob pattern) in `folder` and its subfolders, sorted. (epath refuses "**"
    globs on object stores, one listing per folder being the costly part; this lists each folder once.)"""
    if is_local(folder):
        return sorted(p for p in folder.rglob(name) if p.is_file())
    scheme = os.fspath(folder).partition("://")[0] + "://"  # fsspec's walk names folders without it.
    return sorted(
        epath.Path(root if "://" in (root := os.fspath(top)) else scheme + root) / file
        for top, _, names in folder.walk()
        for file in names
        if fnmatch.fnmatch(file, name)
    )


def move(source: Path, target: Path) -> None:
    """Moves folder `source` to `target` (absent). A local rename is one atomic step; an object store has no
    folders to rename, so there each file is copied, then `source` deleted (a crash between leaves both)."""
    if is_local(source):
        source.rename(target)
        return
    for file in files(source):
        (target / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        file.copy(target / file.relative_to(source))
    rmtree(source)


def rmtree(folder: Path) -> None:
    """Deletes `folder` and everything in it."""
    if is_local(folder):
        import shutil  # Local only: shutil does not reach object stores.

        shutil.rmtree(folder)
    else:
        folder.rmtree()


@contextlib.contextmanager
def replacing(target: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a local temporary path; once the block ends without an error, its content becomes `target`,
    atomically (see the module docstring), and the temporary is gone.

        with storage.replacing(out / "table.npz") as tmp:
            np.savez(tmp, ...)

    Creates the parent folder. A local temporary lies beside the target and carries the process id, so two
    processes writing the same file (two runs filling one cache folder) never share one; the last rename
    wins, whole. On an object store, the last upload wins, whole.
    """
    target = path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_local(target):
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    else:
        handle, name = tempfile.mkstemp(suffix=f".{target.name}")
        os.close(handle)
        tmp = pathlib.Path(name)
    try:
        yield tmp
        if is_local(target):
            tmp.replace(target)
        else:
            with open(tmp, "rb") as src, target.open("wb") as dst:  # One upload, visible once complete.
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Writes `text` to `target` atomically; returns the path."""
    with replacing(target) as tmp:
        tmp.write_text(text)
    return path(target)


def write_json(target: str | os.PathLike, value) -> Path:
    """`value` as indented JSON with a trailing newline, written atomically."""
    return write_text(target, json.dumps(value, indent=2) + "\n")


def read_json(source: str | os.PathLike, default=None):
    """The JSON content of `source`, or `default` when the file does not exist."""
    try:
        return json.loads(path(source).read_text())
    except FileNotFoundError:
        return default
