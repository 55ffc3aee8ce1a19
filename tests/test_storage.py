"""The path layer (sharpt_jax.storage) on local folders and on GCS (an emulator): no `/cwd/gs:` folders, atomic
writes, JSON reads, the workdir lock, metrics.jsonl and TensorBoard events on an object store."""

import json
import os
import pathlib

import gcs_emulator
import pytest
from etils.epath import gpath

from sharpt_jax import logs, storage, workdir_lock


@pytest.fixture(scope="module")
def gcs():
    """(emulator URL, gcsfs reader) with this process's gs:// paths sent to the emulator."""
    with gcs_emulator.running() as url, pytest.MonkeyPatch.context() as env:
        for name, value in gcs_emulator.client_env(url).items():
            env.setenv(name, value)
        # epath picks its gs:// backend once per process (TensorFlow when installed): pick again, under
        # EPATH_USE_TF=0, and once more after the tests, for whatever runs next in this process.
        gpath._is_tf_installed.cache_clear()
        try:
            yield url, gcs_emulator.reader(url)
        finally:
            gpath._is_tf_installed.cache_clear()


def test_local_paths_stay_plain_pathlib(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert type(storage.path("runs/a")) is type(pathlib.Path("runs/a"))
    assert storage.path("~/x") == pathlib.Path.home() / "x"
    assert storage.absolute("a/../b") == tmp_path / "b"
    assert storage.is_local("/x/y") and not storage.is_local("gs://bucket/x")
    # A URI keeps its scheme: joined, named, made absolute and printed.
    run = storage.path("gs://bucket/runs") / "a"
    assert str(run) == "gs://bucket/runs/a" and run.name == "a" and str(run.parent) == "gs://bucket/runs"
    assert str(storage.absolute("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert str(pathlib.Path("gs://bucket/x").absolute()) == f"{tmp_path}/gs:/bucket/x"  # What storage avoids.


def test_local_writes_are_atomic_and_json_reads_default(tmp_path):
    target = tmp_path / "eval" / "best.json"
    assert storage.read_json(target) is None and storage.read_json(target, {}) == {}
    storage.write_json(target, {"step": 4})
    with pytest.raises(RuntimeError), storage.replacing(target) as tmp:
        tmp.write_text('{"step": ')  # Half written, then the writer dies:
        raise RuntimeError
    assert storage.read_json(target) == {"step": 4}  # the reader still sees the whole previous file,
    assert sorted(p.name for p in target.parent.iterdir()) == ["best.json"]  # and no temporary is left.


def test_gcs_writes_reach_the_bucket_whole_and_make_no_local_folder(gcs, tmp_path, monkeypatch):
    _, bucket = gcs
    monkeypatch.chdir(tmp_path)
    target = f"gs://{gcs_emulator.BUCKET}/layer/eval/best.json"
    assert storage.read_json(target, "absent") == "absent"
    storage.write_json(target, {"step": 4, "test": {"score": 50.0}})
    assert json.loads(bucket.cat_file(target)) == {"step": 4, "test": {"score": 50.0}}  # Read by gcsfs itself.
    assert storage.read_json(target) == {"step": 4, "test": {"score": 50.0}}
    # A write that fails midway leaves the previous object, and no temporary object beside it.
    with pytest.raises(RuntimeError), storage.replacing(target) as tmp:
        tmp.write_text('{"step": ')
        raise RuntimeError
    assert json.loads(bucket.cat_file(target))["step"] == 4
    assert bucket.ls(f"{gcs_emulator.BUCKET}/layer/eval") == [target.removeprefix("gs://")]
    # Folders, listings, moves and deletes.
    folder = storage.path(f"gs://{gcs_emulator.BUCKET}/layer/ckpt/4")
    storage.write_text(folder / "params" / "a", "A")
    storage.write_text(folder / "b", "B")
    moved = storage.path(f"gs://{gcs_emulator.BUCKET}/layer/aside/4")
    storage.move(folder, moved)
    assert not folder.exists() and (moved / "params" / "a").read_text() == "A" and (moved / "b").read_text() == "B"
    storage.rmtree(moved)
    assert not bucket.exists(f"{gcs_emulator.BUCKET}/layer/aside/4/b")
    assert storage.version(storage.path(target))[1] == len(bucket.cat_file(target))
    assert not list(tmp_path.iterdir())  # Nothing became a local "gs:" folder.


def test_lock_on_gcs_refuses_a_live_holder_and_takes_over_a_dead_one(gcs):
    _, bucket = gcs
    workdir = storage.path(f"gs://{gcs_emulator.BUCKET}/locked")
    with workdir_lock.hold(workdir):
        held = json.loads(bucket.cat_file(str(workdir / workdir_lock.LOCK)))
        assert held["pid"] == os.getpid()
        # Another run of this host while this one lives: refused, naming the holder.
        live = {**held, "pid": os.getppid(), "started": workdir_lock.process_start(os.getppid())}
        bucket.pipe_file(str(workdir / workdir_lock.LOCK), (json.dumps(live) + "\n").encode())
        with pytest.raises(workdir_lock.WorkdirInUse, match=f"pid {os.getppid()}"):
            workdir_lock.acquire(workdir / workdir_lock.LOCK)
        bucket.pipe_file(str(workdir / workdir_lock.LOCK), (json.dumps(held) + "\n").encode())
    assert not bucket.exists(str(workdir / workdir_lock.LOCK))  # Released.
    # A lock left by a killed run of this host (a pid that is gone) is taken over.
    dead = {"host": held["host"], "pid": 2**22 + 1, "started": 1, "since": held["since"]}
    bucket.pipe_file(str(workdir / workdir_lock.LOCK), (json.dumps(dead) + "\n").encode())
    with workdir_lock.hold(workdir):
        assert json.loads(bucket.cat_file(str(workdir / workdir_lock.LOCK)))["pid"] == os.getpid()
    # Another host's lock is never taken over: its process cannot be checked from here.
    other = {**dead, "host": "another-host"}
    bucket.pipe_file(str(workdir / workdir_lock.LOCK), (json.dumps(other) + "\n").encode())
    with pytest.raises(workdir_lock.WorkdirInUse, match="another-host"), workdir_lock.hold(workdir):
        pass


def test_metrics_and_tensorboard_on_gcs(gcs):
    _, bucket = gcs
    workdir = storage.path(f"gs://{gcs_emulator.BUCKET}/logged")
    metrics = logs.MetricsFile(workdir / "metrics.jsonl", keep_until=0, enabled=True)
    for step in (2, 4, 6):
        metrics.write({"step": step, "loss": 1.0 / step})
    assert [json.loads(line)["step"] for line in bucket.cat_file(str(workdir / "metrics.jsonl")).splitlines()] == [
        2,
        4,
        6,
    ]
    # A resume from step 4 drops the lines the killed run wrote after it, then appends.
    metrics = logs.MetricsFile(workdir / "metrics.jsonl", keep_until=4, enabled=True)
    metrics.write({"step": 6, "loss": 0.5})
    lines = bucket.cat_file(str(workdir / "metrics.jsonl")).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 2, "loss": 0.5},
        {"step": 4, "loss": 0.25},
        {"step": 6, "loss": 0.5},
    ]
    writer = logs.tensorboard_writer(workdir)
    writer.write_scalars(2, {"loss": 0.5})
    writer.flush()  # Every flush uploads: a killed run keeps what it logged until its last flush.
    (events,) = bucket.ls(str(workdir / "tensorboard"))
    size = len(bucket.cat_file(events))
    assert os.path.basename(events).startswith("events.out.tfevents.") and size > 0
    writer.write_scalars(4, {"loss": 0.25})
    writer.close()
    assert len(bucket.cat_file(events)) > size


def test_tensorstore_revalidates_what_it_read_on_gcs(gcs):
    """Orbax's TensorStore rereads a cached object (an OCDBT manifest) only if its generation changed: the
    generation its read reported must be the object's (GCS's x-goog-generation header), and usable as a
    condition. Without the header it read 0, and the conditional read failed ("Malformed StorageGeneration")."""
    import tensorstore as ts

    _, bucket = gcs
    kvstore = ts.KvStore.open({"driver": "gcs", "bucket": gcs_emulator.BUCKET, "path": "ts/"}).result()
    kvstore.write("manifest", b"first").result()
    read = kvstore.read("manifest").result()
    generation = int(bucket.info(f"{gcs_emulator.BUCKET}/ts/manifest")["generation"])
    generation_bytes = b"\0" + generation.to_bytes(8, "little")  # TensorStore's StorageGeneration::FromUint64.
    assert read.value == b"first" and read.stamp.generation == generation_bytes
    # Unchanged: GCS answers 304 (not modified), the emulator the bytes again; the same generation either way.
    assert kvstore.read("manifest", if_not_equal=read.stamp.generation).result().stamp.generation == generation_bytes
