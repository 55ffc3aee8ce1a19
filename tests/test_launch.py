"""Launching on several hosts: a SLURM job step (2 processes started with the variables srun sets, joined by JAX's
own SLURM detection, no coordinator fields) computes what 1 process does, and JAX derives from those variables
what docs/multi_host.md says it does; a hub model is downloaded by process 0 alone (from a fake hub on
localhost), and a model folder's checksum is hashed once."""

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from jax._src import clusters
from test_multihost import NUM_PROCESSES, SUMMED, assert_ok, finish
from test_train import ROOT, read_metrics, saved_state
from tiny_run import cli_overrides, make_assets, tiny_config

from configs import demo as demo_config
from sharpt_jax import build, checkpoints, train

# JAX's SlurmCluster puts the coordinator on this port of the step's first node: SLURM_JOB_ID % 4096 + 61440.
SLURM_PORTS = 61440


def slurm_env(job_id: int, process_id: int, nodes: str = "localhost") -> dict:
    """What srun sets in each task of a job step (the variables JAX's SlurmCluster reads), one node."""
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_STEP_NODELIST": nodes,
        "SLURM_NTASKS": str(NUM_PROCESSES),
        "SLURM_PROCID": str(process_id),
        "SLURM_LOCALID": str(process_id),
    }


def free_slurm_job_id() -> int:
    """A job id whose coordinator port (61440 + id % 4096) is free on this machine."""
    for port in range(SLURM_PORTS + os.getpid() % 4096, SLURM_PORTS + 4096):
        with socket.socket() as s:
            try:
                s.bind(("localhost", port))
            except OSError:
                continue
            return 4096 * 7 + port - SLURM_PORTS  # Any multiple of 4096 gives the same port.
    raise AssertionError("no free port in 61440-65535")


def test_jax_reads_the_coordinator_processes_and_device_from_srun_variables(monkeypatch):
    for name, value in slurm_env(12345, 1, nodes="gpu[007-010,012],login3").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_NTASKS", "16")
    for name in ("JAX_COORDINATOR_PORT", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 300)
    # The first node of the step, the port from the job id, one process per task, the GPU of the task's local id.
    assert detected == ("gpu007:" + str(12345 % 4096 + SLURM_PORTS), 16, 1, [1])


def test_without_the_flag_a_slurm_task_runs_alone(monkeypatch):
    # srun's variables alone do not make a run distributed: without --config.distributed it is one process of its
    # own, which waits for no coordinator (a run started inside an allocation for other reasons).
    for name, value in slurm_env(12345, 1).items():
        monkeypatch.setenv(name, value)
    build.initialize_distributed(demo_config.get_config())
    assert not jax.distributed.is_initialized()


def test_distributed_in_a_batch_script_outside_srun_is_one_line(tmp_path):
    # An sbatch script's own shell has the job's variables but no job step: JAX finds no cluster.
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    env.pop("SLURM_STEP_NODELIST", None)
    cmd = [sys.executable, "run.py", "--config=configs/demo.py", f"--workdir={tmp_path}", "--config.distributed=True"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: jax.distributed.initialize failed (coordinator_address should be defined.); under SLURM start "
        "every process with srun (JAX reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and "
        "SLURM_LOCALID); outside TPU pods and SLURM, Open MPI or Kubernetes jobs set "
        "--config.coordinator_address=HOST:PORT --config.num_processes=N --config.process_id=I on every host"
    )
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_a_slurm_job_step_trains_as_one_process(tmp_path):
    assets = make_assets(tmp_path / "assets")
    config = tiny_config(assets, num_train_steps=4, save_every=4, log_every=2)
    reference = tmp_path / "one_process"
    train.train(config, reference)

    workdir, job_id = tmp_path / "slurm", free_slurm_job_id()
    procs = []
    for process_id in range(NUM_PROCESSES):
        env = {**os.environ, **slurm_env(job_id, process_id), "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        cmd = [sys.executable, "run.py", "--config=configs/demo.py", f"--workdir={workdir}", *cli_overrides(config)]
        cmd.append("--config.distributed=True")
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = finish(procs)
    assert_ok(results)
    assert "steps 0 -> 4" in results[0][1] and "steps" not in results[1][1]  # Two processes, process 0 prints.

    ours, want = read_metrics(workdir), read_metrics(reference)
    assert [r["step"] for r in ours] == [r["step"] for r in want] == [2, 4]
    for got, expected in zip(ours, want, strict=True):
        for name in SUMMED:
            np.testing.assert_allclose(got[name], expected[name], rtol=2e-5, err_msg=f"step {got['step']} {name}")
    want_state, got_state = saved_state(reference, 4), saved_state(workdir, 4)
    assert got_state.keys() == want_state.keys()
    for path in want_state:
        np.testing.assert_allclose(got_state[path], want_state[path], rtol=1e-5, atol=1e-6, err_msg=path)


def _reference_checksum(folder: Path, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(names):
        data = (folder / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def test_the_weights_checksum_is_hashed_once_per_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"d_model": 8}')
    (folder / "model.safetensors").write_bytes(b"weights-1" * 1000)
    (folder / "README.md").write_text("not part of the model")
    first = checkpoints.folder_checksum(folder)
    assert first == _reference_checksum(folder, ["config.json", "model.safetensors"])
    assert (folder / checkpoints.CHECKSUM_CACHE).is_file()

    # A copy that keeps names, sizes and modification times (rsync -a, cp -p) reuses the saved digest without
    # reading the weights: their bytes changed behind it (same size, mtime put back) do not show.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # copy2: modification times kept.
    weights, stat = copy / "model.safetensors", (copy / "model.safetensors").stat()
    weights.write_bytes(b"weights-2" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert checkpoints.folder_checksum(copy) == first

    # A written file (new modification time) is hashed again, and the cache follows it.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    second = checkpoints.folder_checksum(copy)
    assert second == _reference_checksum(copy, ["config.json", "model.safetensors"]) != first
    assert json.loads((copy / checkpoints.CHECKSUM_CACHE).read_text())["sha256"] == second


class FakeHub:
    """One model repository served on localhost the way the Hugging Face hub serves it to `snapshot_download`
    (the revision, the file tree, each file), logging every request in `requests`."""

    def __init__(self, repo: str, files: dict[str, bytes], commit: str = "c0ffee" * 6 + "0123"):
        self.repo, self.files, self.commit, self.requests = repo, files, commit, []
        handler = type("Handler", (_HubHandler,), {"hub": self})
        self.server = http.server.ThreadingHTTPServer(("localhost", 0), handler)
        self.url = f"http://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str) -> tuple[bytes, dict] | None:
        api, resolve = f"/api/models/{self.repo}/", f"/{self.repo}/resolve/{self.commit}/"
        if path.startswith(api + "revision/"):
            return json.dumps({"id": self.repo, "sha": self.commit}).encode(), {}
        if path.startswith(api + "tree/"):
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in self.files.items()
            ]
            return json.dumps(tree).encode(), {}
        if path.startswith(resolve) and (data := self.files.get(path.removeprefix(resolve))) is not None:
            return data, {"X-Repo-Commit": self.commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return None


class _HubHandler(http.server.BaseHTTPRequestHandler):
    hub: FakeHub

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool):
        self.hub.requests.append(f"{self.command} {self.path}")
        found = self.hub.answer(self.path.split("?")[0])
        data, headers = found or (b"", {})
        self.send_response(200 if found else 404)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


# The results go to a file of their own: Gloo's C++ start-up lines share stdout, unflushed, and can split a line.
RESOLVE = """
import os
import jax
from sharpt_jax import checkpoints, hf_weights
jax.distributed.initialize()  # From the SLURM variables.
with open(os.environ["RESULT_FILE"], "w") as out:
    folder = hf_weights.resolve_folder_on_hosts("org/tiny")
    print(folder, checkpoints.folder_checksum(folder), file=out, flush=True)
    try:
        hf_weights.resolve_folder_on_hosts("org/missing")
    except hf_weights.CheckpointError as err:
        print(err, file=out, flush=True)
"""


def test_a_hub_model_is_downloaded_once_by_process_0(tmp_path):
    weights = {"config.json": b'{"model_type": "t5"}', "model.safetensors": b"weights" * 1000}
    hub = FakeHub("org/tiny", {**weights, "README.md": b"not downloaded"})
    job_id, procs = free_slurm_job_id(), []
    for process_id in range(NUM_PROCESSES):
        env = {**os.environ, **slurm_env(job_id, process_id), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
        env.update(HF_HOME=str(tmp_path / "hf_home"), JAX_PLATFORMS="cpu")  # One HF_HOME for both: shared.
        env.update(RESULT_FILE=str(tmp_path / f"result{process_id}.txt"))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RESOLVE], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    results = [(p.returncode, out.decode(), err.decode()) for p, (out, err) in ((p, p.communicate(300)) for p in procs)]
    assert_ok(results)

    # Process 0 alone asked the hub: the revision once, the tree once, each model file once (the README never).
    asked = [r for r in hub.requests if "/org/tiny/" in r]
    assert sorted(r.split(" ")[0] + " " + r.split("/")[-1].split("?")[0] for r in asked) == [
        f"GET {hub.commit}",
        "GET config.json",
        "GET main",
        "GET model.safetensors",
        "HEAD config.json",
        "HEAD model.safetensors",
    ]
    first, second = ((tmp_path / f"result{i}.txt").read_text().splitlines() for i in range(NUM_PROCESSES))
    snapshot = tmp_path / "hf_home" / "hub" / "models--org--tiny" / "snapshots" / hub.commit
    assert first[0] == f"{snapshot} {_reference_checksum(snapshot, list(weights))}"
    assert second[0] == first[0]  # The same commit, the same files.
    assert first[1].startswith("org/missing: no local folder of that name and the hub download failed")
    assert second[1] == "org/missing: process 0 could not resolve it (its output says why)"
