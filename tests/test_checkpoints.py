"""Orbax checkpoints of the train state: bit-identical round trips (Adam state over an nnx.State), restore
onto a 4x2 mesh, metadata, listed steps, damaged checkpoints named and set aside, a crash mid-save that leaves
earlier steps intact, parameter-only restore, and the checksums that identify the frozen models."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from test_train import largest_files

from sharpt_jax import checkpoints, optim, sharding, train
from sharpt_jax.models import layers
from sharpt_jax.models.sharpt import Codebook

REPO = Path(__file__).resolve().parents[1]
METADATA = {
    "step": 2,
    "data": {"start_step": 2, "seed": 7},
    "backbone": {"path": "/t5", "sha256": "ab" * 32},
    "config": {"lr": 0.3, "mesh_shape": [4, 2], "note": None, "tiny": True},
}


class Toy(nnx.Module):
    """A codebook (replicated) and a Dense layer whose output axis shards over 'model'."""

    def __init__(self, rngs: nnx.Rngs):
        self.codebook = Codebook(6, 8, rngs=rngs)
        self.ffn = layers.Dense(8, 16, ("embed", "mlp"), use_bias=True, rngs=rngs)


@pytest.fixture(scope="module")
def state():
    """The train state after two Adam steps (non-zero moments, count 2)."""
    trainable = nnx.state(Toy(nnx.Rngs(0)), nnx.Param)
    tx = optim.make_optimizer("adam", 0.1, warmup_steps=0)
    state = train.init_train_state(trainable, tx)
    for key in jax.random.split(jax.random.key(0), 2):
        grads = jax.tree.map(lambda x, k=key: jax.random.normal(k, x.shape), state["trainable"])
        updates, opt = tx.update(grads, state["opt"], state["trainable"])
        state = {"trainable": optax.apply_updates(state["trainable"], updates), "opt": opt, "step": state["step"] + 1}
    return state


def _assert_identical(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_round_trip_is_bit_identical(state, tmp_path):
    ckpts = checkpoints.Checkpoints(tmp_path)
    ckpts.save(2, state, METADATA)
    restored, metadata = checkpoints.Checkpoints(tmp_path).restore(2, jax.eval_shape(lambda: state))
    _assert_identical(restored, state)
    assert isinstance(restored["trainable"], nnx.State)
    assert isinstance(restored["opt"][0], optax.ScaleByAdamState) and int(restored["opt"][0].count) == 2
    assert int(restored["step"]) == 2
    assert metadata == METADATA and ckpts.metadata(2) == METADATA
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == ["2"]


def test_restore_onto_mesh_shardings(state, tmp_path):
    """Saved from one device, restored split as the target asks: the kernel [8, 16] and bias [16] of the Dense
    (and their Adam moments) over 'model', everything else replicated."""
    checkpoints.Checkpoints(tmp_path).save(2, state, METADATA)
    mesh = sharding.make_mesh("4,2")
    specs = {(8, 16): PartitionSpec(None, "model"), (16,): PartitionSpec("model")}
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=NamedSharding(mesh, specs.get(x.shape, PartitionSpec()))
        ),
        state,
    )
    restored, _ = checkpoints.Checkpoints(tmp_path).restore(2, abstract)
    _assert_identical(restored, state)
    for leaf, target in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
        assert leaf.sharding == target.sharding
    kernel = restored["trainable"]["ffn"]["kernel"][...]
    assert {shard.data.shape for shard in kernel.addressable_shards} == {(8, 8)}


def test_steps_are_listed_and_all_kept(state, tmp_path):
    """Every step keeps its parameters; only the last two keep the optimizer state (a resume reads the latest,
    or the one before when the latest is damaged)."""
    ckpts = checkpoints.Checkpoints(tmp_path)
    assert ckpts.all_steps() == [] and ckpts.latest_step() is None
    for step in (500, 1000, 1500):
        ckpts.save(step, state, {**METADATA, "step": step})
    again = checkpoints.Checkpoints(tmp_path)
    assert again.all_steps() == [500, 1000, 1500] and again.latest_step() == 1500
    assert again.resumable_steps() == [1000, 1500]
    assert [again.metadata(s)["step"] for s in again.all_steps()] == [500, 1000, 1500]
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 7"):
        again.restore(7, state)
    abstract = jax.eval_shape(lambda: state)
    _assert_identical(again.restore_params(500, abstract["trainable"]), state["trainable"])
    assert not (tmp_path / "checkpoints" / "500" / checkpoints.RESUME).exists()
    with pytest.raises(FileNotFoundError, match=r"keeps only its parameters.*last 2 checkpoints, \[1000, 1500\]"):
        again.restore(500, abstract)
    for step in (1000, 1500):
        restored, _ = again.restore(step, abstract)
        _assert_identical(restored, state)


@pytest.mark.parametrize("damage", ["truncate the largest file", "delete the resume files", "delete metadata"])
def test_a_damaged_checkpoint_raises_one_line_and_is_set_aside(state, tmp_path, damage):
    """A listed checkpoint whose largest file is cut in half, or whose files are deleted, raises
    DamagedCheckpoint with one line naming it; `set_aside` moves it out of the listing, and the one before
    restores bit for bit."""
    ckpts = checkpoints.Checkpoints(tmp_path)
    for step in (1, 2):
        ckpts.save(step, state, {**METADATA, "step": step})
    latest = tmp_path / "checkpoints" / "2"
    if damage == "truncate the largest file":
        for path in largest_files(latest):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "delete the resume files":
        for path in (latest / checkpoints.RESUME).rglob("*"):
            if path.is_file():
                path.unlink()
    else:
        shutil.rmtree(latest / checkpoints.METADATA)
    abstract = jax.eval_shape(lambda: state)
    reopened = checkpoints.Checkpoints(tmp_path)
    with pytest.raises(checkpoints.DamagedCheckpoint) as err:
        reopened.metadata(2)
        reopened.restore(2, abstract)
    message = str(err.value)
    assert message.startswith(f"checkpoint 2 in {tmp_path / 'checkpoints'} cannot be read (") and "\n" not in message
    assert reopened.set_aside(2) == tmp_path / checkpoints.DAMAGED / "2"
    assert reopened.all_steps() == [1] and checkpoints.Checkpoints(tmp_path).all_steps() == [1]
    restored, metadata = reopened.restore(1, abstract)
    _assert_identical(restored, state)
    assert metadata["step"] == 1
    reopened.save(2, state, {**METADATA, "step": 2})  # The step can be written again.
    assert reopened.resumable_steps() == [1, 2]


CRASH = """
import os, sys
import jax.numpy as jnp
import orbax.checkpoint as ocp
from sharpt_jax import checkpoints

async def crash(*args, **kwargs):
    os._exit(3)  # Dies like a killed process: no exception handling, no clean-up.

ckpts = checkpoints.Checkpoints(sys.argv[1])
ckpts.save(500, {"trainable": {"w": jnp.arange(6.0)}, "step": jnp.int32(500)}, {"step": 500})
ocp.JsonCheckpointHandler.async_save = crash
ckpts.save(1000, {"trainable": {"w": jnp.arange(6.0) + 1}, "step": jnp.int32(1000)}, {"step": 1000})
"""


def test_crash_mid_save_leaves_earlier_checkpoints(tmp_path):
    """A process that dies while saving step 1000 (its state being written, its metadata not) leaves a
    temporary folder but lists no step 1000; the restarted run restores 500, and the leftover is gone by the
    time it saves 1000 again."""
    result = subprocess.run(
        [sys.executable, "-c", CRASH, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    folders = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]
    assert "1000" not in folders and any(name.startswith("1000.") for name in folders)
    restarted = checkpoints.Checkpoints(tmp_path)
    assert restarted.all_steps() == [500] and restarted.latest_step() == 500
    state = {"trainable": {"w": jnp.arange(6.0)}, "step": jnp.int32(500)}
    restored, metadata = restarted.restore(500, jax.eval_shape(lambda: state))
    _assert_identical(restored, state)
    assert metadata == {"step": 500}
    restarted.save(1000, {**state, "step": jnp.int32(1000)}, {"step": 1000})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == ["1000", "500"]
    assert checkpoints.Checkpoints(tmp_path).all_steps() == [500, 1000]


def test_restore_params_reads_only_the_asked_parameters(state, tmp_path):
    """A target run takes the codebook of a source checkpoint: only that subtree comes back."""
    checkpoints.Checkpoints(tmp_path).save(2, state, METADATA)
    abstract = nnx.State({"codebook": jax.eval_shape(lambda: state["trainable"]["codebook"])})
    restored = checkpoints.Checkpoints(tmp_path).restore_params(2, abstract)
    assert jax.tree.structure(restored) == jax.tree.structure(abstract)
    np.testing.assert_array_equal(
        restored["codebook"]["embeddings"][...], state["trainable"]["codebook"]["embeddings"][...]
    )
    assert not np.array_equal(
        restored["codebook"]["embeddings"][...], nnx.state(Toy(nnx.Rngs(0)), nnx.Param)["codebook"]["embeddings"][...]
    )


def test_checksums(tmp_path):
    """file_checksum is sha256 of the bytes (2.5 MiB: read in several chunks); folder_checksum follows the
    config and weights files only."""
    payload = np.random.default_rng(0).bytes(5 << 19)
    (tmp_path / "blob").write_bytes(payload)
    assert checkpoints.file_checksum(tmp_path / "blob") == hashlib.sha256(payload).hexdigest()

    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text('{"d_model": 8}')
    with pytest.raises(FileNotFoundError, match="no weights files"):
        checkpoints.folder_checksum(folder)
    (folder / "model.safetensors").write_bytes(payload)
    first = checkpoints.folder_checksum(folder)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("a model")
    assert checkpoints.folder_checksum(folder) == first
    (folder / "model.safetensors").write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    assert checkpoints.folder_checksum(folder) != first
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "config.json").write_text('{"d_model": 16}')
    assert checkpoints.folder_checksum(folder) != first
