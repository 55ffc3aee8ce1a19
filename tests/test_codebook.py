"""Codebook health: k-means against scikit-learn and known clusters, dead-skill restarts by hand, and through the
trainer: the k-means start is the k-means of the run's first batches, restarts re-seat dead skills, and a run
stopped and continued ends bit-identical to one that never stopped."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.cluster import KMeans
from test_train import assert_same_run
from tiny_run import make_assets, tiny_config

from sharpt_jax import build, checkpoints, codebook_health, data, optim, train
from sharpt_jax.models.sharpt import Codebook


def test_kmeans_finds_separated_clusters_as_well_as_scikit_learn():
    rng = np.random.default_rng(0)
    centres = 10.0 * rng.normal(size=(6, 5))
    points = np.concatenate([c + rng.normal(size=(50, 5)) for c in centres])
    ours = codebook_health.kmeans(points, 6, seed=3)
    # Each true centre has one centroid within the noise of its 50 points' mean.
    nearest = np.linalg.norm(ours[:, None] - centres[None], axis=-1).min(axis=0)
    assert np.all(nearest < 0.5)

    def inertia(c):
        return np.sum(np.min(np.linalg.norm(points[:, None] - c[None], axis=-1) ** 2, axis=1))

    reference = KMeans(6, n_init=10, random_state=0).fit(points).cluster_centers_
    assert inertia(ours) <= inertia(reference) * (1 + 1e-9)
    np.testing.assert_array_equal(codebook_health.kmeans(points, 6, seed=3), ours)  # Deterministic under its seed.
    with pytest.raises(ValueError, match="at least 6 points"):
        codebook_health.kmeans(points[:5], 6, seed=0)


class Toy(nnx.Module):
    def __init__(self):
        self.codebook = Codebook(4, 3, rngs=nnx.Rngs(0))


def test_restart_reseats_dead_skills_on_the_farthest_instances():
    """Skills 1 and 3 were never chosen: they take the instances farthest from their skills (3, then 1)."""
    trainable = nnx.state(Toy(), nnx.Param)
    before = np.asarray(trainable["codebook"]["embeddings"][...])
    e0 = np.arange(12.0).reshape(4, 3)
    restarted = jax.jit(codebook_health.restart_dead_skills)(
        trainable, jnp.array([3, 0, 1, 0]), e0, jnp.array([0.1, 5.0, 2.0, 7.0])
    )
    after = np.asarray(restarted["codebook"]["embeddings"][...])
    np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
    np.testing.assert_array_equal(after[1], e0[3])
    np.testing.assert_array_equal(after[3], e0[1])
    # More dead skills than instances: the first B get one each, the rest wait.
    two = jax.jit(codebook_health.restart_dead_skills)(trainable, jnp.zeros(4, int), e0[:2], jnp.array([1.0, 2.0]))
    after = np.asarray(two["codebook"]["embeddings"][...])
    np.testing.assert_array_equal(after[:2], e0[[1, 0]])
    np.testing.assert_array_equal(after[2:], before[2:])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def healthy_config(assets, **overrides):
    fields = dict(codebook_init="kmeans", codebook_restart_every=3, num_train_steps=9, log_every=1)
    return tiny_config(assets, **{**fields, **overrides})


def test_kmeans_start_is_the_kmeans_of_the_first_batches(assets, tmp_path):
    config = healthy_config(assets, num_train_steps=1, learning_rate=0.0, warmup_steps=0)
    train.train(config, tmp_path)
    saved = checkpoints.Checkpoints(tmp_path)
    files = build.resolve_files(config)
    train_task, _ = build.configure_tasks(config, files)
    mesh = build.make_mesh(config)
    model, _ = build.build_model(config, files, mesh)
    graphdef, trainable, frozen = optim.split_model(model, "sharpt", "source")
    batches = data.train_batches(train_task, config.sequence_length.to_dict(), config.batch_size, mesh, config.seed)
    embeddings = []
    while sum(map(len, embeddings)) < codebook_health.KMEANS_EXAMPLES_PER_SKILL * config.num_skills:
        batch, _ = next(batches)
        merged = nnx.merge(graphdef, trainable, frozen)
        embeddings.append(
            np.asarray(merged.instance_encoder(batch["instance_input_tokens"], batch["instance_input_mask"]))
        )
    expected = codebook_health.kmeans(
        np.concatenate(embeddings)[: codebook_health.KMEANS_EXAMPLES_PER_SKILL * config.num_skills],
        config.num_skills,
        config.seed,
    )
    restored = saved.restore_params(1, nnx.State({"codebook": trainable["codebook"]}))
    # A learning rate of 0 leaves the start as it was (the step-1 restart needs a period of 1; this one is 3).
    np.testing.assert_allclose(np.asarray(restored["codebook"]["embeddings"][...]), expected, rtol=1e-5, atol=1e-5)


class Killed(Exception):
    """Stands for the process dying right after a checkpoint is on disk."""


@pytest.mark.slow
def test_restarts_run_and_a_resumed_run_is_bit_identical(assets, tmp_path, monkeypatch):
    """9 steps with restarts every 3 (at steps 3 and 6; none in the last 3): straight, and stopped right after
    the checkpoint of step 4 (inside the window 4-6) and started again."""
    config = healthy_config(assets, num_train_steps=9)
    straight = tmp_path / "straight"
    train.train(config, straight)
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    restarted = {r["step"]: r["restarted_skills"] for r in records}
    assert set(restarted) == set(range(1, 10)) and all(restarted[s] == 0 for s in (1, 2, 4, 5, 7, 8, 9))
    assert restarted[3] + restarted[6] > 0  # The premise: some skills died and were re-seated.

    stopped = tmp_path / "stopped"
    real_save = checkpoints.Checkpoints.save

    def save_then_die(self, step, state, metadata):
        real_save(self, step, state, metadata)
        if step == 4:
            raise Killed

    monkeypatch.setattr(checkpoints.Checkpoints, "save", save_then_die)
    with pytest.raises(Killed):
        train.train(config, stopped)
    monkeypatch.undo()
    train.train(config, stopped)
    assert_same_run(straight, stopped, 9)
