"""Sentence and document classification and similarity outside GLUE: docnli, yelp_polarity, cr, cxc.

- docnli (TFDS doc_nli:1.0.0): "doc_nli hypothesis: .. premise: .." -> not_entailment / entailment, with
  every whitespace run of the inputs turned into one space (SPoT's text classification format);
- yelp_polarity (yelp_polarity_reviews:0.2.0, splits train and test): "yelp_polarity_reviews text: .." ->
  negative / positive. With no validation split, its official test split is the held-out split;
- cr (SentEval customer reviews, only from the data folder: {"sentence", "label"}, splits train and test):
  "cr sentence: .." -> negative / positive. About 3K training rows, so its official test split is halved
  into validation and test (seed 42), as the protocol does with the validation split of small datasets;
- cxc (Crisscrossed Captions STS pairs, only from the data folder: {"sentence1", "sentence2", "score"},
  splits validation and test): "cxc sentence1: .. sentence2: .." -> the score rounded to 0.2 ("3.4"), as
  STS-B. CxC has no training split, so its official validation split (44K pairs) is the training pool:
  1K of it validates and the official test split tests.
The cxc and yelp_polarity formats are proposals in T5 style (TASKS.md); docnli's is SPoT's.
"""

import tensorflow as tf

from tasks import preprocessors, registry
from tasks.sources import RawData

_TEXT = tf.TensorSpec([], tf.string)
_LABEL = tf.TensorSpec([], tf.int64)


def _register() -> None:
    def classification(raw: RawData, benchmark: str, keys: tuple[str, ...], collapse_whitespace=False) -> None:
        label_names = registry.label_names(raw.name)
        format_fn = preprocessors.key_value(benchmark, keys, label_names, collapse_whitespace=collapse_whitespace)
        registry.add_task(raw, "classification", format_fn)

    classification(
        RawData("docnli", {"hypothesis": _TEXT, "premise": _TEXT, "label": _LABEL}, tfds_names=("doc_nli:1.0.0",)),
        "doc_nli",
        ("hypothesis", "premise"),
        collapse_whitespace=True,  # SPoT's format joins with T5's whitespace-collapsing `_string_join`.
    )
    classification(
        RawData(
            "yelp_polarity",
            {"text": _TEXT, "label": _LABEL},
            tfds_names=("yelp_polarity_reviews:0.2.0",),
            heldout_split="test",
        ),
        "yelp_polarity_reviews",
        ("text",),
    )
    classification(RawData("cr", {"sentence": _TEXT, "label": _LABEL}, heldout_split="test"), "cr", ("sentence",))
    registry.add_task(
        RawData(
            "cxc",
            {"sentence1": _TEXT, "sentence2": _TEXT, "score": tf.TensorSpec([], tf.float32)},
            train_split="validation",
            heldout_split="test",
        ),
        "classification",
        preprocessors.key_value("cxc", ("sentence1", "sentence2"), score_key="score"),
    )


_register()
