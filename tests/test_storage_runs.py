"""A run with everything on GCS (an emulator, tests/gcs_emulator.py): its workdir, its data_dir and its instance
embedding cache. It trains, is killed, resumes, is scored, exported, served and reported, each step the command a
user types, and ends with the numbers of the same run kept in local folders."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gcs_emulator
import pytest
from tiny_run import cli_overrides, make_assets, tiny_config

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("examples_per_sec", "steps_per_sec")


def command(env: dict, *args: str, wait: bool = True):
    """`python ARGS` from the repository root with the emulator's environment; (returncode, stderr) or the
    process."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def run_py(env: dict, config, workdir: str, *extra: str, wait: bool = True):
    return command(
        env, "run.py", "--config=configs/demo.py", f"--workdir={workdir}", *cli_overrides(config), *extra, wait=wait
    )


def metrics(text: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in text.splitlines()]


@pytest.mark.slow
def test_a_run_on_gcs_trains_resumes_evaluates_exports_serves_and_reports(tmp_path):
    assets = make_assets(tmp_path / "assets")
    with gcs_emulator.running() as url:
        env = {**os.environ, **gcs_emulator.client_env(url), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
        bucket, gs = gcs_emulator.reader(url), f"gs://{gcs_emulator.BUCKET}"
        bucket.put(assets["data_dir"], f"{gcs_emulator.BUCKET}/data", recursive=True)
        fields = dict(num_train_steps=10, save_every=4, log_every=2, instance_embedding_cache=f"{gs}/cache")
        config = tiny_config(assets, data_dir=f"{gs}/data", **fields)
        workdir, local = f"{gs}/runs/source", tmp_path / "source"

        # The reference: the same run in a local folder, never stopped, then scored.
        assert run_py(env, config, str(local))[0] == 0
        assert run_py(env, config, str(local), "--config.mode=eval")[0] == 0

        # Train on GCS, SIGKILLed once checkpoint 4 is committed (Orbax's marker on object stores), then resumed.
        proc = run_py(env, config, workdir, wait=False)
        marker = f"{gcs_emulator.BUCKET}/runs/source/checkpoints/4/commit_success.txt"
        while not bucket.exists(marker):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.1)  # The emulator serves one request at a time: leave it to the run.
        proc.kill()
        proc.communicate()
        assert not bucket.exists(f"{gcs_emulator.BUCKET}/runs/source/checkpoints/10")
        code, err = run_py(env, config, workdir)
        assert code == 0, err[-3000:]
        assert metrics(bucket.cat_file(f"{workdir}/metrics.jsonl").decode()) == metrics(
            (local / "metrics.jsonl").read_text()
        )
        assert bucket.ls(f"{workdir}/tensorboard") and not bucket.exists(f"{workdir}/lock")
        assert bucket.ls(f"{gs}/cache")  # The instance embeddings were cached there.

        # Scored on GCS: the same results as the local run's.
        code, err = run_py(env, config, workdir, "--config.mode=eval")
        assert code == 0, err[-3000:]
        results = json.loads(bucket.cat_file(f"{workdir}/eval/results.json"))
        assert results == json.loads((local / "eval" / "results.json").read_text())
        best = json.loads(bucket.cat_file(f"{workdir}/eval/best.json"))
        assert best["test"] and best == json.loads((local / "eval" / "best.json").read_text())

        # Exported to GCS, served from there (rows and predictions on GCS too), and reported there.
        code, err = command(env, "-m", "sharpt_jax.export", "--workdir", workdir, "--out", f"{gs}/adapter")
        assert code == 0, err[-3000:]
        assert json.loads(bucket.cat_file(f"{gs}/adapter/adapter.json"))["run"]["workdir"] == workdir
        rows = [json.loads(line) for line in (Path(assets["data_dir"]) / "sst2" / "validation.jsonl").open()][:5]
        bucket.pipe_file(f"{gs}/rows.jsonl", "".join(json.dumps({"task": "sst2", **r}) + "\n" for r in rows).encode())
        code, err = command(
            env, "-m", "sharpt_jax.predict", "--adapter", f"{gs}/adapter", "--input", f"{gs}/rows.jsonl",
            "--output", f"{gs}/predictions.jsonl",
        )  # fmt: skip
        assert code == 0, err[-3000:]
        predictions = [json.loads(line) for line in bucket.cat_file(f"{gs}/predictions.jsonl").splitlines()]
        assert len(predictions) == 5 and all("prediction" in p for p in predictions)
        code, err = command(env, "-m", "sharpt_jax.report", "--runs", f"{gs}/runs", "--out", f"{gs}/report")
        assert code == 0, err[-3000:]
        assert "sst2" in bucket.cat_file(f"{gs}/report/results.md").decode()
        assert bucket.exists(f"{gs}/report/results.csv")
    assert not (ROOT / "gs:").exists()  # No command wrote a local folder named after the URI.
