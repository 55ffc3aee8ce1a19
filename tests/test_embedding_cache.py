"""Cached instance embeddings: a cached run equals an uncached one, reuses its table, resumes exactly after
SIGKILL, and another encoder never reads the table."""

import types
from pathlib import Path

import numpy as np
import pytest
from test_train import assert_same_run, read_metrics, run_cli, saved_state
from tiny_run import kill_once_saved, make_assets, make_tiny_bert, tiny_config

from sharpt_jax import build, checkpoints, embedding_cache, train


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def run_config(assets, cache: Path | str = ""):
    """The 10-step tiny source run, with its instance embeddings cached in `cache` ("" = not cached).

    The codebook starts at random (the paper's start): k-means centroids of the bundled samples' few distinct
    rows sit on instances, where distances near 0 turn float rounding into large relative differences of the
    codebook loss, which would hide what is compared here, the cache."""
    return tiny_config(
        assets,
        num_train_steps=10,
        save_every=4,
        log_every=2,
        instance_embedding_cache=str(cache),
        codebook_init="random",
    )


@pytest.fixture(scope="module")
def cached_run(assets, tmp_path_factory):
    """(config, workdir, cache folder) of one finished source run with its table built in the cache folder."""
    cache = tmp_path_factory.mktemp("cache")
    config = run_config(assets, cache)
    workdir = tmp_path_factory.mktemp("cached")
    train.train(config, workdir)
    return config, workdir, cache


def never_encode(*args, **kwargs):
    raise AssertionError("the instance embeddings were computed again instead of read from the cache")


def test_cached_run_equals_uncached(assets, cached_run, tmp_path):
    _, cached, cache = cached_run
    train.train(run_config(assets), tmp_path)  # The same run with the encoder in every step.
    (table,) = cache.glob("*.npz")
    assert table.name.startswith("sharpt_mix_sst2+rte.")
    ours, ref = read_metrics(cached), read_metrics(tmp_path)
    assert [r["step"] for r in ours] == [r["step"] for r in ref]
    for key in ("loss", "lm_loss", "codebook_loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in ours], [r[key] for r in ref], rtol=1e-4, err_msg=key)
    assert [r["dead_skills"] for r in ours] == [r["dead_skills"] for r in ref]
    expected, got = saved_state(tmp_path, 10), saved_state(cached, 10)
    assert expected.keys() == got.keys()
    for path in expected:
        np.testing.assert_allclose(got[path], expected[path], rtol=1e-4, atol=1e-5, err_msg=path)


@pytest.mark.slow
def test_sigkill_and_restart_with_the_cache_end_bit_identical(cached_run, tmp_path, monkeypatch):
    config, straight, cache = cached_run
    (table,) = cache.glob("*.npz")
    built = table.stat().st_mtime_ns
    # run.py with the same cache folder, killed once its first checkpoint is on disk, then started again.
    out = kill_once_saved(run_cli(config, tmp_path, wait=False), tmp_path, 4)
    assert f"rows read from {table}" in out
    assert checkpoints.Checkpoints(tmp_path).latest_step() < 10
    monkeypatch.setattr(embedding_cache, "compute_embeddings", never_encode)
    train.train(config, tmp_path)

    assert list(cache.glob("*.npz")) == [table] and table.stat().st_mtime_ns == built  # Read, never rewritten.
    assert_same_run(straight, tmp_path, 10)


def test_another_encoder_builds_its_own_table(assets, cached_run, tmp_path):
    config, _, cache = cached_run
    (first,) = cache.glob("*.npz")
    built = first.stat().st_mtime_ns
    other = run_config(assets, cache)
    other.encoder = str(make_tiny_bert(tmp_path / "other_bert", seed=1))
    files = build.resolve_files(other)
    task, _ = build.configure_tasks(other, files)
    mesh = build.make_mesh(other)
    model, identity = build.build_model(other, files, mesh)
    table = embedding_cache.for_run(other, task, model, identity, mesh)
    assert table.path != first and table.path.exists() and first.stat().st_mtime_ns == built
    ours = embedding_cache.load(first)
    np.testing.assert_array_equal(table.tokens, ours.tokens)  # The same rows, other embeddings.
    assert not np.allclose(table.embeddings, ours.embeddings)
    # The table holds the encoder's e0 of each row, as the step would compute it.
    rows = table.tokens[:16]
    direct = np.asarray(model.instance_encoder(rows, (rows != 0).astype(np.int32)))
    np.testing.assert_allclose(table.lookup(rows[::-1]), direct[::-1], rtol=1e-5, atol=1e-6)
    # Methods without an instance encoder have nothing to cache.
    no_encoder = types.SimpleNamespace(instance_encoder=None)
    assert embedding_cache.for_run(other, task, no_encoder, identity, mesh) is None


def test_lookup_replaces_the_instance_features_and_names_the_file_of_a_missing_row():
    tokens = np.array([[5, 6, 0], [1, 2, 3], [5, 0, 0]], np.int32)
    order = np.argsort(embedding_cache._row_keys(tokens))
    table = embedding_cache.EmbeddingTable(tokens[order], np.arange(3, dtype=np.float32)[order, None], Path("t.npz"))
    batch = {"instance_input_tokens": tokens[[2, 0, 2]], "instance_input_mask": tokens[[2, 0, 2]] != 0, "x": 1}
    out = table.replace_tokens(batch)
    assert set(out) == {"x", "instance_embedding"}
    np.testing.assert_array_equal(out["instance_embedding"][:, 0], [2.0, 0.0, 2.0])
    with pytest.raises(embedding_cache.MissingRow, match=r"1 of 2 instance rows are not in t.npz.*delete"):
        table.lookup(np.array([[1, 2, 3], [1, 2, 4]], np.int32))
