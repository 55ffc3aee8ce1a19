"""One run per workdir: a live holder refuses a second run (run.py: one line, exit 2), a dead one's lock is taken over
by exactly one of the runs that find it. (A killed run resumed through its stale lock: tests/test_train.py.)"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import target as target_config
from sharpt_jax import workdir_lock

ROOT = Path(__file__).resolve().parents[1]
HOLD = """import sys; from sharpt_jax import workdir_lock as w
with w.hold(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()"""


@pytest.fixture
def holder(tmp_path):
    """(workdir, process) where another live process holds the workdir's lock until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "held\n"
    yield tmp_path, proc
    proc.stdin.close()
    proc.wait(timeout=60)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(workdir: Path, **record) -> None:
    record = {"host": socket.gethostname(), "pid": dead_pid(), "started": 1, "since": "2026-01-01T00:00:00", **record}
    (workdir / workdir_lock.LOCK).write_text(json.dumps(record))


def test_a_live_holder_refuses_and_releases(holder):
    workdir, proc = holder
    with pytest.raises(workdir_lock.WorkdirInUse) as info:
        workdir_lock.acquire(workdir / workdir_lock.LOCK)
    message = str(info.value)
    assert f"host {socket.gethostname()}, pid {proc.pid}, since 20" in message and "\n" not in message
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert not (workdir / workdir_lock.LOCK).exists()  # Released at the end of the block.


@pytest.mark.parametrize("mode", [pytest.param("train", marks=pytest.mark.slow), "eval"])  # Each ~10-30 s.
def test_run_py_on_a_busy_workdir_is_one_line_and_exit_2(holder, mode):
    """A second run.py (train or eval) on a folder in use: refused before anything is built, naming the holder."""
    workdir, proc = holder
    config = target_config.get_config("rte,method=prompt_tuning")  # Needs no source run.
    (workdir / "config.json").write_text(config.to_json())
    args = ["--config=configs/target.py:rte,method=prompt_tuning"] if mode == "train" else ["--config.mode=eval"]
    run = subprocess.run(
        [sys.executable, "run.py", f"--workdir={workdir}", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith(
        f"error: {workdir} is in use by another run (host {socket.gethostname()}, pid {proc.pid}"
    )
    assert run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json", "lock", "lock.guard"]  # Nothing built.


def test_stale_locks_are_taken_over_others_are_not(tmp_path):
    lock = tmp_path / workdir_lock.LOCK
    other = subprocess.Popen(["sleep", "60"])
    for stale in (
        {},  # A killed run of this host: its pid is gone.
        {"pid": other.pid},  # Its pid reused by a process that started later.
        None,  # Unreadable.
    ):
        if stale is None:
            lock.write_text("{")
        else:
            write_lock(tmp_path, **stale)
        record = workdir_lock.acquire(lock)
        assert json.loads(lock.read_text()) == record == workdir_lock.own_record() | {"since": record["since"]}
        workdir_lock.release(lock, record)
        assert not lock.exists()
    other.kill()
    # Another host's lock is never taken over: its process cannot be checked from here.
    write_lock(tmp_path, host="elsewhere")
    with pytest.raises(workdir_lock.WorkdirInUse, match=f"host elsewhere, .*if that run is gone, delete {lock}"):
        workdir_lock.acquire(lock)
    assert json.loads(lock.read_text())["host"] == "elsewhere"


TAKE = """import sys; from sharpt_jax import workdir_lock as w
try:
    w.acquire(w.Path(sys.argv[1]))
except w.WorkdirInUse:
    sys.exit(3)
sys.stdin.read()  # Holds it (alive) until the test has seen the others refused."""


def test_one_of_several_runs_takes_over_a_stale_lock(tmp_path):
    write_lock(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TAKE, str(tmp_path / workdir_lock.LOCK)], cwd=ROOT, stdin=subprocess.PIPE
        )
        for _ in range(4)
    ]
    deadline = time.time() + 120
    while sum(proc.poll() is not None for proc in procs) < 3 and time.time() < deadline:
        time.sleep(0.1)
    for proc in procs:
        proc.stdin.close()
    assert sorted(proc.wait(timeout=60) for proc in procs) == [0, 3, 3, 3]
