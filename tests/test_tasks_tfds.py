"""The TFDS path of every TFDS-backed task, offline.

1. The pinned builders exist at their pinned versions, define the official splits the registry reads (from
   the builder's own split generators, run with a download manager that downloads nothing) and have the raw
   fields read, with compatible dtypes.
2. Under `tfds.testing.mock_data` (the real TFDS builders and `as_dataset` code, random examples of their
   features) each registered task builds every protocol split and formats the rows.
"""

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

import tasks
from tasks import registry

TFDS_TASKS = [n for n in sorted(tasks.names()) if registry.raw_data(n).tfds_names]
FILE_TASKS = [n for n in sorted(tasks.names()) if not registry.raw_data(n).tfds_names]

# The first words of the inputs of each task (TASKS.md).
PREFIXES = {
    "docnli": "doc_nli hypothesis: ",
    "yelp_polarity": "yelp_polarity_reviews text: ",
    "mnli": "mnli hypothesis: ",
    "qqp": "qqp question1: ",
    "qnli": "qnli question: ",
    "record": "record query: ",
    "squad": "squad question: ",
    "drop": "drop question: ",
    "sst2": "sst2 sentence: ",
    "winogrande": "winogrande sentence: ",
    "hellaswag": "hellaswag context: ",
    "multirc": "multirc question: ",
    "cosmosqa": "cosmos_qa context: ",
    "race": "race question: ",
    "boolq": "boolq passage: ",
    "cb": "cb hypothesis: ",
    "cola": "cola sentence: ",
    "copa": "copa choice1: ",
    "mrpc": "mrpc sentence1: ",
    "rte": "rte sentence1: ",
    "stsb": "stsb sentence1: ",
    "wic": "wic sentence1: ",
    "wsc": "wsc: ",
}


class _NoDownloads:
    """A download manager whose downloads are paths that do not exist: enough to list a builder's splits."""

    manual_dir = epath.Path("/nonexistent")

    def _paths(self, urls):
        if isinstance(urls, dict):
            return {k: self._paths(v) for k, v in urls.items()}
        if isinstance(urls, (list, tuple)):
            return type(urls)(self._paths(v) for v in urls)
        return epath.Path("/nonexistent/download")

    download = download_and_extract = extract = _paths


def _split_names(builder) -> set[str]:
    generators = builder._split_generators(_NoDownloads())
    return {str(g) for g in generators} if isinstance(generators, dict) else {str(g.name) for g in generators}


def _dtype_kind(dtype: tf.DType) -> str:
    return "string" if dtype == tf.string else "float" if dtype.is_floating else "int"


def _check_fields(specs, tfds_specs, where):
    for key, spec in specs.items():
        assert key in tfds_specs, f"{where}: no field {key!r}"
        if isinstance(spec, dict):
            _check_fields(spec, tfds_specs[key], f"{where}.{key}")
        else:
            assert _dtype_kind(spec.dtype) == _dtype_kind(tfds_specs[key].dtype), f"{where}.{key}"
            assert spec.shape.rank == tfds_specs[key].shape.rank, f"{where}.{key}"


def test_task_sources_split_as_tasks_md():
    assert FILE_TASKS == ["cr", "cxc"]
    assert len(TFDS_TASKS) == 23


@pytest.mark.parametrize("name", TFDS_TASKS)
def test_pinned_builders_have_the_splits_and_fields_read(name, tmp_path):
    raw = registry.raw_data(name)
    for tfds_name in raw.tfds_names:
        builder = tfds.builder(tfds_name, data_dir=tmp_path)
        assert str(builder.version) == tfds_name.split(":")[1]
        assert set(raw.official_splits) <= _split_names(builder), tfds_name
        _check_fields(raw.features, builder.info.features.get_tensor_spec(), tfds_name)


@pytest.mark.parametrize("name", TFDS_TASKS)
def test_tasks_read_tfds_under_mock_data(name):
    """Reads the training rows through TFDS and formats them.

    Tokenisation is left to test_tasks_formats (it does not depend on the source). RACE's mock rows are not
    formatted: random lists of questions, options and answers of unequal lengths are no RACE article.
    """
    tasks.configure(data_dir=None)
    task = seqio.get_mixture_or_task(f"sharpt_{name}")
    raw = registry.raw_data(name)
    assert raw.source_name(None) == "tfds:" + "+".join(raw.tfds_names)
    with tfds.testing.mock_data(num_examples=6):
        # Six mock rows per builder and split: small data, so the training split is read whole.
        train = list(task.source.get_dataset("train").as_numpy_iterator())
        assert len(train) == 6 * len(raw.tfds_names)
        assert all(row["is_train"] for row in train)
        if name == "race":
            return
        examples = list(task.preprocessors[0](task.source.get_dataset("train")).as_numpy_iterator())
    assert len(examples) >= (6 if name not in ("wsc", "record") else 1)
    for ex in examples:
        assert ex["inputs"].decode().startswith(PREFIXES[name])
        assert isinstance(ex["targets"], bytes)
        if "label" in ex:
            assert ex["label"].dtype == np.int64
