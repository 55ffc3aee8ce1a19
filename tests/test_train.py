"""The train loop: files a run writes, exact resume after SIGKILL, meshes, the target stage's source checks."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_run import cli_overrides, kill_once_saved, make_assets, tiny_config

from configs import source_mix as source_config
from configs import target as target_config
from sharpt_jax import build, checkpoints, evaluate, source_stage, train, workdir_lock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def source_run(assets, tmp_path_factory):
    """(config, workdir) of one finished source run on 8 devices (mesh 8x1) that several tests read."""
    config = tiny_config(assets, num_train_steps=10, save_every=4, log_every=2)
    workdir = tmp_path_factory.mktemp("source")
    train.train(config, workdir)
    return config, workdir


def read_metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def run_cli(config, workdir: Path, devices: int = 8, wait: bool = True):
    """run.py with configs/demo.py and the flags that make it `config`, as a user would start it."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, "run.py", "--config=configs/demo.py", f"--workdir={workdir}", *cli_overrides(config)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def saved_state(workdir: Path, step: int) -> dict:
    """The checkpoint's arrays (parameters, and the resume state where kept) as a flat {path: numpy array},
    restored onto one device of this process whatever the devices and processes that saved them."""
    import orbax.checkpoint as ocp

    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    flat = {}
    for item in (checkpoints.PARAMS, checkpoints.RESUME):
        if (folder := workdir / "checkpoints" / str(step) / item).exists():
            checkpointer = ocp.PyTreeCheckpointer()
            saved = checkpointer.metadata(folder).item_metadata.tree
            target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), saved)
            restore_args = ocp.checkpoint_utils.construct_restore_args(target)
            restored = checkpointer.restore(folder, args=ocp.args.PyTreeRestore(target, restore_args=restore_args))
            leaves = jax.tree_util.tree_leaves_with_path(restored)
            flat.update({item + jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    return flat


def assert_same_run(expected: Path, actual: Path, step: int) -> None:
    """Checkpoint `step` of the two runs is bit-identical and their metrics.jsonl equal but for the timings."""
    want, got = saved_state(expected, step), saved_state(actual, step)
    assert want.keys() == got.keys()
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=path)
    timing = ("examples_per_sec", "steps_per_sec")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(read_metrics(actual)) == strip(read_metrics(expected))


def test_run_writes_metrics_checkpoints_and_tensorboard(assets, source_run):
    config, workdir = source_run
    records = read_metrics(workdir)
    # Logged every 2 steps; saved every 4 steps and at the last step.
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10]
    for r in records:
        assert {"step", "loss", "learning_rate", "examples_per_sec", "skill_perplexity", "dead_skills"} <= set(r)
        assert np.isfinite(r["loss"]) and r["examples_per_sec"] > 0
        assert 1.0 <= r["skill_perplexity"] <= config.num_skills
        assert 0 <= r["dead_skills"] < config.num_skills
    # Linear warm-up from 0 over 2 steps, then constant: the rate of the window's last step (0-based 1, 3, ...).
    lr = config.learning_rate
    assert [r["learning_rate"] for r in records] == pytest.approx([lr / 2, lr, lr, lr, lr])
    assert checkpoints.Checkpoints(workdir).all_steps() == [4, 8, 10]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((workdir / "config.json").read_text())["task"] == "sst2,rte"
    meta = checkpoints.Checkpoints(workdir).metadata(10)
    assert meta["step"] == 10 and meta["identity"]["t5"]["path"] == "random"
    assert meta["identity"]["encoder"]["checksum"] == checkpoints.folder_checksum(assets["encoder"])
    # Only the trainable part is saved: codebook and generator, never T5 or the encoder.
    paths = saved_state(workdir, 10)
    assert any("codebook" in p for p in paths) and any("generator" in p for p in paths)
    assert not any("t5" in p or "instance_encoder" in p for p in paths)
    # Adam's moments are kept in the last two checkpoints only (a resume reads no other).
    assert any(p.startswith(checkpoints.RESUME) and "mu" in p for p in paths)
    assert any(p.startswith(checkpoints.RESUME) and "mu" in p for p in saved_state(workdir, 8))
    assert not any(p.startswith(checkpoints.RESUME) for p in saved_state(workdir, 4))
    # The metadata records where the input stream stands after the step's batch.
    position = checkpoints.Checkpoints(workdir).metadata(10)["data"]
    assert position["step"] == 10 and sorted(position["tasks"]) == ["sharpt_rte", "sharpt_sst2"]


@pytest.mark.slow
def test_sigkill_and_restart_end_bit_identical(source_run, tmp_path):
    config, straight = source_run  # The reference: the same run, never stopped.
    # The same command, killed with SIGKILL once its first checkpoint is on disk, then started again.
    kill_once_saved(run_cli(config, tmp_path, wait=False), tmp_path, 4)
    assert checkpoints.Checkpoints(tmp_path).latest_step() < 10
    code, _, err = run_cli(config, tmp_path)
    assert code == 0, err[-2000:]

    assert_same_run(straight, tmp_path, 10)


@pytest.mark.slow
def test_sigkill_and_restart_of_a_single_task_end_bit_identical(assets, tmp_path):
    """The same for a one-task run (the sample RTE rows: the resumed run crosses epochs of its permutation)."""
    config = tiny_config(assets, task="rte", num_train_steps=10, save_every=4, log_every=2)
    straight = tmp_path / "straight"
    train.train(config, straight)
    kill_once_saved(run_cli(config, tmp_path / "killed", wait=False), tmp_path / "killed", 4)
    code, out, err = run_cli(config, tmp_path / "killed")
    assert code == 0, err[-2000:]
    assert "steps 4 -> 10" in out or "steps 8 -> 10" in out
    assert_same_run(straight, tmp_path / "killed", 10)


@pytest.mark.parametrize("devices, mesh_shape", [(1, "1,1"), (8, "4,2")])
def test_meshes_match(source_run, tmp_path, devices, mesh_shape):
    """One device and mesh 4x2 against the 8x1 source run: same losses within 1e-3."""
    config, reference = source_run
    config = config.copy_and_resolve_references()
    config.mesh_shape = mesh_shape
    if devices == 8:
        train.train(config, tmp_path)
    else:
        code, _, err = run_cli(config, tmp_path, devices=devices)
        assert code == 0, err[-2000:]
    ours, ref = read_metrics(tmp_path), read_metrics(reference)
    assert [r["step"] for r in ours] == [r["step"] for r in ref]
    np.testing.assert_allclose([r["loss"] for r in ours], [r["loss"] for r in ref], rtol=1e-3)


def test_micro_batches_on_a_mesh_match_the_full_batch(assets, tmp_path):
    """Mesh 4x2, batch 8 as 2 micro-batches of 4 (each over the 4 data devices), no dropout: the losses of the
    full-batch run (tests/test_sharpt.py checks the update itself)."""
    runs = []
    for micro_batches in (1, 2):
        # The paper's random start: k-means centroids sit on the samples' few distinct rows, and distances near 0
        # turn float rounding into large relative changes of the codebook loss (tests/test_embedding_cache.py).
        config = tiny_config(
            assets,
            mesh_shape="4,2",
            micro_batches=micro_batches,
            num_train_steps=4,
            save_every=4,
            codebook_init="random",
        )
        config.t5_random.dropout_rate = 0.0
        train.train(config, tmp_path / str(micro_batches))
        runs.append(read_metrics(tmp_path / str(micro_batches)))
    for name in ("loss", "lm_loss", "codebook_loss", "grad_norm"):
        np.testing.assert_allclose([r[name] for r in runs[1]], [r[name] for r in runs[0]], rtol=1e-4, err_msg=name)


def test_target_starts_from_the_source_codebook_and_generator(assets, source_run, tmp_path):
    _, source = source_run
    target = tiny_config(assets, stage="target", task="rte", num_train_steps=4, source_checkpoint=str(source))
    files = build.resolve_files(target)
    build.configure_tasks(target, files)
    model, identity = build.build_model(target, files, build.make_mesh(target))
    record = source_stage.restore_source(model, target, identity)
    assert record == {"workdir": str(source.absolute()), "step": 10}
    saved = saved_state(source, 10)
    restored = {"codebook": model.codebook, "generator": model.generator}
    for path, value in nnx.to_flat_state(nnx.state(restored)):
        key = checkpoints.PARAMS + "".join(f"['{p}']" for p in path) + "['value']"
        np.testing.assert_array_equal(np.asarray(value[...]), saved[key], err_msg=key)
    # The target run saves only the generator (the codebook is frozen) and records its source.
    train.train(target, tmp_path)
    assert checkpoints.Checkpoints(tmp_path).metadata(4)["source"] == record
    trained = [p for p in saved_state(tmp_path, 4) if p.startswith(checkpoints.PARAMS)]
    assert trained and all(p.startswith(checkpoints.PARAMS + "['generator']") for p in trained)


def test_nan_stops_with_the_last_good_checkpoint_kept(assets, source_run, tmp_path, monkeypatch):
    shutil.copytree(source_run[1], tmp_path, dirs_exist_ok=True)
    # The source run continued with a learning rate that overflows the generator: stopped at the next log. (A
    # resume refuses another rate, so this test lets it: a run that diverges after good checkpoints, at once.)
    monkeypatch.setattr(train, "RESUME_MAY_CHANGE", (*train.RESUME_MAY_CHANGE, "learning_rate", "warmup_steps"))
    diverging = tiny_config(assets, num_train_steps=14, learning_rate=1e30, warmup_steps=0)
    with pytest.raises(train.TrainingDiverged, match="between steps 10 and 12; the last good checkpoint is step 10"):
        train.train(diverging, tmp_path)
    assert checkpoints.Checkpoints(tmp_path).all_steps() == [4, 8, 10]
    assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4, 6, 8, 10]  # Nothing non-finite was logged.


def largest_files(folder: Path) -> list[Path]:
    """The files of `folder` of the largest size: Orbax's OCDBT can hold an array's bytes in two such files (its
    process's and the merged database's), only one of which a restore reads."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = max(p.stat().st_size for p in files)
    return [p for p in files if p.stat().st_size == size]


def _damage(checkpoint: Path, how: str) -> None:
    if how == "truncate":  # A preempted copy to object storage, a full disk: the largest file cut short.
        for largest in largest_files(checkpoint):
            largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])
    else:  # Files deleted by hand.
        for path in (checkpoint / checkpoints.RESUME).rglob("*"):
            if path.is_file():
                path.unlink()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_a_damaged_latest_checkpoint_is_named_and_the_one_before_takes_over(source_run, tmp_path, capfd, how):
    """The finished source run (checkpoints 4, 8, 10) with checkpoint 10 damaged: the restart says so in one
    line, sets it aside, resumes from 8 and ends bit-identical to the run that never stopped."""
    config, straight = source_run
    shutil.copytree(straight, tmp_path, dirs_exist_ok=True)
    _damage(tmp_path / "checkpoints" / "10", how)
    capfd.readouterr()
    train.train(config, tmp_path)
    out, err = capfd.readouterr()
    warnings = [line for line in err.splitlines() if "cannot be read" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint 10 in {tmp_path / 'checkpoints'}")
    assert warnings[0].endswith(f"moved to {tmp_path / checkpoints.DAMAGED / '10'}, resuming from the one before")
    assert "steps 8 -> 10" in out
    assert_same_run(straight, tmp_path, 10)
    assert (tmp_path / checkpoints.DAMAGED / "10").is_dir()


def test_eval_mode_skips_a_checkpoint_whose_parameters_cannot_be_read(assets, source_run, tmp_path, capfd):
    _, straight = source_run
    shutil.copytree(straight, tmp_path, dirs_exist_ok=True)
    for largest in largest_files(tmp_path / "checkpoints" / "8" / checkpoints.PARAMS):
        largest.write_bytes(b"")
    capfd.readouterr()
    evaluate.evaluate_checkpoints(tiny_config(assets, num_train_steps=10, mode="eval"), tmp_path)
    warnings = [line for line in capfd.readouterr().err.splitlines() if "cannot be read" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint 8 in {tmp_path / 'checkpoints'}")
    assert warnings[0].endswith("; not scored")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert sorted(k for k in results if k != "protocol") == ["10", "4"]


def test_a_killed_runs_lock_is_taken_over_and_the_run_resumes(assets, source_run, tmp_path):
    """The lock a SIGKILLed run leaves (its pid gone) does not stop the same command from resuming."""
    config, source = source_run
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    killed = subprocess.Popen(["true"])
    killed.wait()
    stale = {"host": socket.gethostname(), "pid": killed.pid, "started": 1, "since": "2026-01-01T00:00:00+00:00"}
    (tmp_path / workdir_lock.LOCK).write_text(json.dumps(stale))
    train.train(tiny_config(assets, num_train_steps=12, save_every=4, log_every=2), tmp_path)
    assert checkpoints.Checkpoints(tmp_path).all_steps() == [4, 8, 10, 12]  # Resumed at 10.
    assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4, 6, 8, 10, 12]
    assert not (tmp_path / workdir_lock.LOCK).exists()


def test_mismatched_source_and_foreign_workdir_are_refused(assets, source_run, tmp_path):
    _, source = source_run
    # A target on another backbone (a different random T5 shape) than the source used.
    other = tiny_config(assets, stage="target", task="rte", source_checkpoint=str(source))
    other.t5_random.d_ff = 48
    assert "was trained with t5 random" in error_of(other, tmp_path / "t")
    wrong_k = tiny_config(assets, stage="target", task="rte", num_skills=5, source_checkpoint=str(source))
    assert "num_skills=4" in error_of(wrong_k, tmp_path / "k")
    # Resuming a workdir with another task would silently mix two runs; the workdir is left as it was.
    before = (source / "config.json").read_text()
    assert "holds checkpoints of another run" in error_of(tiny_config(assets, task="sst2"), source)
    assert (source / "config.json").read_text() == before


def test_a_resume_under_another_config_is_refused_but_a_longer_one_continues(assets, source_run, tmp_path):
    """Resuming with a changed learning rate or loss weight would alter the run midway: refused, naming each field
    and both values, the workdir untouched. More steps, another cadence or eval batch size continue the run."""
    config, source = source_run
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    steps = checkpoints.Checkpoints(tmp_path).all_steps()
    changed = tiny_config(assets, num_train_steps=config.num_train_steps + 2, learning_rate=0.05, beta=0.5)
    message = error_of(changed, tmp_path)
    assert f"learning_rate (the run's: {config.learning_rate!r}, now: 0.05)" in message
    assert f"beta (the run's: {config.beta!r}, now: 0.5)" in message and "num_train_steps" not in message
    assert checkpoints.Checkpoints(tmp_path).all_steps() == steps
    assert (tmp_path / "config.json").read_text() == (source / "config.json").read_text()
    longer = tiny_config(assets, num_train_steps=config.num_train_steps + 2, save_every=2, log_every=1)
    longer.eval.batch_size = 4
    train.train(longer, tmp_path)
    assert checkpoints.Checkpoints(tmp_path).all_steps()[-1] == config.num_train_steps + 2


# ---------------------------------------------------------------------------------------------
# Clear errors.
# ---------------------------------------------------------------------------------------------


def error_of(config, workdir) -> str:
    with pytest.raises(build.ConfigError) as info:
        train.train(config, workdir)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_clear_errors(assets, tmp_path):
    assert "unknown task nope" in error_of(tiny_config(assets, task="nope"), tmp_path / "a")
    assert "config.method='ours'" in error_of(tiny_config(assets, method="ours"), tmp_path / "b")
    assert "needs 9 devices but 8" in error_of(tiny_config(assets, mesh_shape="3,3"), tmp_path / "c")
    assert "does not divide" in error_of(tiny_config(assets, mesh_shape="8,1", batch_size=4), tmp_path / "d")
    target = dict(stage="target", task="rte")
    assert "set --config.source_checkpoint" in error_of(tiny_config(assets, **target), tmp_path / "e")
    missing = tiny_config(assets, **target, source_checkpoint=str(tmp_path / "none"))
    assert "no checkpoints under" in error_of(missing, tmp_path / "f")
    assert "micro_batches=3 does not divide" in error_of(tiny_config(assets, micro_batches=3), tmp_path / "i")
    assert "does not divide" in error_of(tiny_config(assets, micro_batches=2), tmp_path / "j")  # 4 rows, 8 devices.
    bad_scoring = tiny_config(assets)
    bad_scoring.eval.scoring = "rank"
    assert "config.eval.scoring='rank' is not one of decode, rank_classification" in error_of(
        bad_scoring, tmp_path / "h"
    )
    offline = tiny_config(assets, t5="google/t5-base-lm-adapt")
    assert "`hf download google/t5-base-lm-adapt --local-dir DIR`" in error_of(offline, tmp_path / "g")


def test_bad_or_missing_data_ends_the_run_before_any_model(assets, tmp_path):
    """A bad row on line 5 of rte/train.jsonl, then no RTE file at all (and no TFDS RTE): one line each, raised by
    the data check before the models are built (no checkpoint, no config.json written)."""
    data = tmp_path / "data"
    shutil.copytree(assets["data_dir"], data)
    path = data / "rte" / "train.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[4])
    del row["label"]
    path.write_text("\n".join([*lines[:4], json.dumps(row), *lines[5:]]) + "\n")
    assert error_of(tiny_config(assets, data_dir=str(data)), tmp_path / "a") == f"{path}:5: field 'label' missing"
    path.unlink()
    message = error_of(tiny_config(assets, data_dir=str(data)), tmp_path / "b")
    assert message.startswith(
        f"rte: no rows for split 'train': no file {path}, and TFDS glue/rte:2.0.0 is not prepared"
    )
    assert message.endswith("run `python -m tasks.prepare tfds --tasks rte` on a machine with network access")
    for workdir in (tmp_path / "a", tmp_path / "b"):  # At most the lock's guard file.
        assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()


def test_run_py_prints_one_line_errors(assets, tmp_path):
    code, _, err = run_cli(tiny_config(assets, task="nope"), tmp_path, devices=1)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: config.task='nope': unknown task nope")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "method,optimizer,learning_rate,warmup_steps,prompt_length",
    [
        ("sharpt", "adam", 0.3, 4000, 64),  # The paper.
        ("no_latent", "adam", 0.3, 4000, 64),
        ("prompt_tuning", "adafactor", 0.3, 0, 100),  # Lester et al. / SPoT (google-research/prompt-tuning).
        ("model_tuning", "adafactor_t5", 1e-3, 0, 64),  # T5X's finetune.gin.
    ],
)
def test_paper_configs_give_each_method_its_recipe(method, optimizer, learning_rate, warmup_steps, prompt_length):
    for config in (target_config.get_config(f"rte,method={method}"), source_config.get_config(f"method={method}")):
        got = (config.optimizer, config.learning_rate, config.warmup_steps, config.prompt_length)
        assert got == (optimizer, learning_rate, warmup_steps, prompt_length)
        assert (config.batch_size, config.num_train_steps) == (32, 100_000 if config.stage == "target" else 80_000)
