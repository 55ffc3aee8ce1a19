"""The GLUE tasks (TFDS glue/*:2.0.0, the version SPoT used): cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte.

Formats are T5's (t5/data/glue_utils.py): "<task> key: value ..." with the raw text fields in alphabetical
order, e.g. "rte sentence1: .. sentence2: .." -> entailment / not_entailment; STS-B's target is its score
rounded to 0.2 with one decimal ("3.4"). MNLI's test split is validation_matched, and validation_mismatched is
kept whole as `test_mismatched`.
"""

import tensorflow as tf

from tasks import preprocessors, registry
from tasks.sources import RawData

_TEXT = tf.TensorSpec([], tf.string)
_LABEL = tf.TensorSpec([], tf.int64)
_SCORE = tf.TensorSpec([], tf.float32)

# name -> its raw text fields; the label names are those of tasks.metrics (None: STS-B's score).
_TEXT_FIELDS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("hypothesis", "premise"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}


def _register(name: str, keys: tuple[str, ...]) -> None:
    label_names = registry.label_names(name)
    mnli = name == "mnli"
    registry.add_task(
        RawData(
            name,
            features={**{k: _TEXT for k in keys}, "label": _LABEL if label_names else _SCORE},
            tfds_names=(f"glue/{name}:2.0.0",),
            heldout_split="validation_matched" if mnli else "validation",
            extra_test_splits={"test_mismatched": "validation_mismatched"} if mnli else {},
        ),
        family="glue",
        format_fn=preprocessors.key_value(name, sorted(keys), label_names, score_key=None if label_names else "label"),
    )


for name, keys in _TEXT_FIELDS.items():
    _register(name, keys)
