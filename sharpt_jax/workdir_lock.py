"""One run per workdir: WORKDIR/lock names the run that holds the folder, for as long as it runs.

    with workdir_lock.hold(workdir):
        ...  # train or score; a second run on `workdir` meanwhile raises WorkdirInUse

The lock file holds its holder's record, {"host", "pid", "started", "since"} (`started`: the process's start
time in clock ticks since boot, from /proc, so that a pid reused by another process is not taken for the
holder). It is created atomically: the record is written to a temporary file and hard-linked to the lock's name,
and os.link fails when the name exists (on local disks and NFS alike), so of two runs starting together exactly
one gets the folder. It is removed when the block ends, normally or by an exception.

A run killed with SIGKILL (or a machine that went down) leaves its lock behind. A lock of this host whose
process is gone is stale and taken over: under an exclusive flock of WORKDIR/lock.guard, which serialises the
runs of this host that find it, the new record replaces it with one atomic rename; the run then resumes from
its checkpoints as ever. A lock of another host is never taken over, since its process cannot be checked from
here: the message says to delete the file once that run is known to be gone.

On an object store (a gs:// workdir) there is neither os.link nor flock, and no create-if-absent that epath's
backends (tf.io.gfile, fsspec) expose. There the lock is taken by looking for it, writing the record when it is
absent (or stale), and reading it back: two runs that race see the same last upload (GCS reads are strongly
consistent after a write), and the one whose record it is not is refused. The runs of one host are serialised
by an flock of a local guard file named after the workdir, so a stale lock is taken over once, as on a disk.
What remains is a window of one round trip: two runs on two hosts that start within it may both find the
lock absent and both read back their own record, if each reads before the other writes. A lock on an object
store therefore refuses a second run started any time after the first has begun, but not a truly simultaneous
start on two hosts; launch each run once (one command on every host of one run is one run: process 0 locks).

On several hosts, process 0 takes the lock for the run and tells the other processes whether it got it, so that
every process of a refused run stops with the same error.
"""

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from sharpt_jax import storage

LOCK, GUARD = "lock", "lock.guard"


class WorkdirInUse(RuntimeError):
    """Another live run holds the workdir; the message (one line) names it."""


@contextlib.contextmanager
def hold(workdir: str | os.PathLike) -> Iterator[None]:
    """Holds `workdir`'s lock for the block (process 0 for every process of the run).

    Raises:
      WorkdirInUse: another live run holds it (on every process of a multi-host run).
    """
    lock, refusal = storage.path(workdir) / LOCK, None
    if jax.process_index() == 0:
        try:
            record = acquire(lock)
        except WorkdirInUse as err:
            refusal = err
    if jax.process_count() > 1:  # Every process learns process 0's outcome, so a refused run stops everywhere.
        if not int(multihost_utils.broadcast_one_to_all(np.int32(refusal is None))) and refusal is None:
            refusal = WorkdirInUse(f"{workdir} is in use by another run (process 0 found its lock file {lock})")
    if refusal is not None:
        raise refusal
    try:
        yield
    finally:
        if jax.process_index() == 0:
            release(lock, record)


def acquire(lock: storage.Path) -> dict:
    """Creates `lock` with this process's record (taking over a stale one); returns the record."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    record = own_record()
    if not storage.is_local(lock):
        return _acquire_object(lock, record)
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    try:
        with open(lock.with_name(GUARD), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # Released when closed, or by the kernel when the process dies.
            try:
                os.link(tmp, lock)
                return record
            except FileExistsError:
                holder = read_record(lock)
            if holder is not None and alive(holder):
                raise WorkdirInUse(describe(lock, holder))
            os.replace(tmp, lock)  # Stale (or unreadable: a holder killed while linking cannot leave one).
            return record
    finally:
        tmp.unlink(missing_ok=True)


def _acquire_object(lock: storage.Path, record: dict) -> dict:
    """`acquire` on an object store: look, write, read back (module docstring)."""
    digest = hashlib.sha256(str(lock).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"sharpt_lock.{digest}.guard", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        holder = read_record(lock)
        if holder is not None and alive(holder):
            raise WorkdirInUse(describe(lock, holder))
        storage.write_text(lock, json.dumps(record) + "\n")
        holder = read_record(lock)
        if holder != record:  # Another run wrote it since we looked: the last upload holds the workdir.
            raise WorkdirInUse(describe(lock, holder or {"host": "?", "pid": "?", "since": "?"}))
        return record


def release(lock: storage.Path, record: dict) -> None:
    """Removes `lock` if it still holds `record` (it always should; never delete another run's lock)."""
    if read_record(lock) == record:
        lock.unlink(missing_ok=True)


def own_record() -> dict:
    """This process's record: host, pid, start time, and the time now."""
    now = datetime.datetime.now().astimezone()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": process_start(os.getpid()),
        "since": now.isoformat(timespec="seconds"),
    }


def read_record(lock: storage.Path) -> dict | None:
    """The lock file's record; None when it is gone or not a record."""
    try:
        record = json.loads(lock.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) and {"host", "pid", "since"} <= set(record) else None


def alive(holder: dict) -> bool:
    """Whether the holder may still run: always for another host (its process cannot be checked from here); on
    this host, whether its pid is a process started when the holder's was."""
    if holder["host"] != socket.gethostname():
        return True
    if holder["pid"] == os.getpid():  # This process does not hold it (a lock is never taken twice): stale.
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Another user's process: alive.
        pass
    return holder.get("started") is None or process_start(holder["pid"]) in (None, holder["started"])


def process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks after boot (Linux /proc); None where it is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # Field 22; the command name before it may hold spaces.


def describe(lock: storage.Path, holder: dict) -> str:
    """One line: the folder, its holder (host, pid, since when) and what to do."""
    fix = "wait for it to end or use another --workdir"
    if holder["host"] != socket.gethostname():
        fix += f"; if that run is gone, delete {lock}"
    who = f"host {holder['host']}, pid {holder['pid']}, since {holder['since']}"
    return f"{lock.parent} is in use by another run ({who}): {fix}"
