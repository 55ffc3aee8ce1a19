"""Codebook health: a k-means start for the skill vectors and restarts of dead skills (source stage).

Why: Eq. 4 pulls only the chosen skill vector toward its instances, so a vector that no instance chooses never
moves. With a random start (the project's N(0, 1/m) draw: the paper states no initialisation), the instance
embeddings sit far from the skill vectors (MiniLM's e0 has norm ~5.4, the vectors ~1), the first vector any
instance chooses moves to their centroid and is then the nearest for everything: measured on the skills world,
13-15 of 16 vectors stay dead, also with L2-normalised embeddings (docs/skills_world.md).

- `codebook_init = "kmeans"`: before the first step, the skill vectors become the k-means centroids of the
  instance embeddings of the first training batches (`KMEANS_EXAMPLES_PER_SKILL` x K examples of the run's own
  input stream), so every vector starts among the instances it is meant to cluster.
- `codebook_restart_every = N`: every N steps, each skill that no instance chose during those N steps is
  re-seated on the instance embedding of the current batch that is farthest from its own chosen skill (the
  worst-served instance; the j-th dead skill takes the j-th farthest), inside the jitted step.

Both are deterministic functions of the run's seed and data stream. The k-means start happens only for a fresh
run (a resumed run restores the codebook), and the restart window's counts are part of the checkpointed train
state, so a killed run resumes exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from sharpt_jax import embedding_cache

KMEANS_EXAMPLES_PER_SKILL = 64  # Instances clustered per skill vector for the k-means start.
KMEANS_ITERATIONS = 30  # Lloyd iterations after the k-means++ seeding.


def kmeans(points: np.ndarray, num_clusters: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """k-means++ seeding then Lloyd's iterations, in float64 on the host.

    Args:
      points: [N, m] with N >= num_clusters.
      num_clusters: K.
      seed: seeds the k-means++ draws (the run's seed).

    Returns:
      [K, m] centroids. A cluster that loses all its points keeps its previous centroid.
    """
    points = np.asarray(points, np.float64)
    if len(points) < num_clusters:
        raise ValueError(f"k-means needs at least {num_clusters} points, got {len(points)}")
    rng = np.random.default_rng(seed)
    squared_norms = np.sum(points * points, axis=1)
    centroids = [points[rng.integers(len(points))]]
    nearest = np.sum((points - centroids[0]) ** 2, axis=1)
    for _ in range(1, num_clusters):
        # Each next centroid is drawn with probability proportional to the squared distance to the nearest one.
        probabilities = nearest / nearest.sum() if nearest.sum() > 0 else None
        centroids.append(points[rng.choice(len(points), p=probabilities)])
        nearest = np.minimum(nearest, np.sum((points - centroids[-1]) ** 2, axis=1))
    centroids = np.stack(centroids)
    for _ in range(iterations):
        distances = squared_norms[:, None] - 2.0 * points @ centroids.T + np.sum(centroids * centroids, axis=1)
        assignment = np.argmin(distances, axis=1)
        counts = np.bincount(assignment, minlength=num_clusters)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assignment, points)
        centroids = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
    return centroids


def kmeans_start(trainable: nnx.State, graphdef: nnx.GraphDef, frozen: nnx.State, batches, seed: int) -> nnx.State:
    """`trainable` with the skill vectors set to the k-means centroids of instance embeddings.

    Args:
      trainable, graphdef, frozen: the split SharPT model (the codebook among the trainable part).
      batches: an iterator of global training batches (the run's own stream from step 0); as many are read as
        give KMEANS_EXAMPLES_PER_SKILL * K instances.
      seed: the run's seed (k-means++ draws).

    Returns:
      The trainable state with `codebook/embeddings` [K, m] replaced (same dtype and sharding); every host
      computes the same centroids from the same gathered embeddings.
    """
    table = trainable["codebook"]["embeddings"]
    num_skills = table.shape[0]
    model_graph, model_state = nnx.split(nnx.merge(graphdef, trainable, frozen))
    embeddings, wanted = [], KMEANS_EXAMPLES_PER_SKILL * num_skills
    while sum(len(e) for e in embeddings) < wanted:
        e0, _ = embedding_cache.instance_embeddings(model_graph, model_state, next(batches))
        embeddings.append(np.asarray(multihost_utils.process_allgather(e0, tiled=True)))
    centroids = kmeans(np.concatenate(embeddings)[:wanted], num_skills, seed)
    value = jax.device_put(jnp.asarray(centroids, table.dtype), table[...].sharding)
    trainable = jax.tree.map(lambda x: x, trainable)  # A new state; the caller's stays as it was.
    trainable["codebook"]["embeddings"] = table.replace(value)
    return trainable


def restart_dead_skills(trainable: nnx.State, window_counts: jax.Array, e0: jax.Array, distance: jax.Array):
    """Re-seats every skill that no instance chose in the window on a far instance embedding (jittable).

    Args:
      trainable: the trainable state, `codebook/embeddings` [K, m] among it.
      window_counts: int [K], how many instances chose each skill since the last restart.
      e0: [B, m] the current batch's instance embeddings.
      distance: [B] each instance's distance to its chosen skill vector.

    Returns:
      The trainable state with the j-th dead skill (in index order) set to the instance with the j-th largest
      distance, for j < B (further dead skills wait for the next window).
    """
    table = trainable["codebook"]["embeddings"]
    dead = window_counts == 0  # [K]
    farthest_first = jnp.argsort(-distance)  # [B]
    rank = jnp.cumsum(dead) - 1  # [K]: the j-th dead skill has rank j.
    reseat = dead & (rank < e0.shape[0])
    new_rows = e0[farthest_first[jnp.clip(rank, 0, e0.shape[0] - 1)]].astype(table.dtype)  # [K, m]
    trainable = jax.tree.map(lambda x: x, trainable)
    trainable["codebook"]["embeddings"] = table.replace(jnp.where(reseat[:, None], new_rows, table[...]))
    return trainable
