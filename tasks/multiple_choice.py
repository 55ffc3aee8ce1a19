"""Multiple-choice tasks, all proposals in T5 style (no released SPoT code): winogrande, hellaswag,
cosmosqa and race. The target is the label string of the right option; every example keeps its `label`.

- winogrande (TFDS winogrande:1.2.0, training split "train_xl"):
  "winogrande sentence: .. option1: .. option2: .." -> 1 / 2;
- hellaswag (hellaswag:1.1.0): "hellaswag context: .. ending0: .. ending1: .. ending2: .. ending3: .." -> 0-3;
- cosmosqa (cosmos_qa:1.0.0): "cosmos_qa context: .. question: .. answer0: .. answer3: .." -> 0-3;
- race (race/high:2.0.0 then race/middle:2.0.0, one row per article, held-out split "dev"): one example
  per question, "race question: .. options: A: .. B: .. C: .. D: .. article: .." -> the answer letter.
The test splits of WinoGrande, HellaSwag and CosmosQA have hidden labels (-1); the split protocol never
scores them (their official validation splits are the test splits).
"""

import seqio
import tensorflow as tf

from tasks import preprocessors, registry
from tasks.preprocessors import UNKNOWN, Example, enumerate_fields, indexed_names, join_fields, letters
from tasks.sources import RawData

_TEXT = tf.TensorSpec([], tf.string)
_TEXTS = tf.TensorSpec([None], tf.string)
_LABEL = tf.TensorSpec([], tf.int64)


def _index_target(label: tf.Tensor) -> tf.Tensor:
    """The class id written as a number ("0".."3"), or "<unk>" when hidden (-1)."""
    return tf.cond(tf.equal(label, -1), lambda: tf.constant(UNKNOWN), lambda: tf.strings.as_string(label))


@seqio.map_over_dataset
def winogrande(ex: Example) -> dict:
    inputs = join_fields("winogrande", [(k, ex[k]) for k in ("sentence", "option1", "option2")])
    label = tf.cast(ex["label"], tf.int64)
    targets = preprocessors.class_target(label, registry.label_names("winogrande"))
    return {"inputs": inputs, "targets": targets, "label": label}


@seqio.map_over_dataset
def hellaswag(ex: Example) -> dict:
    endings = enumerate_fields(indexed_names("ending", tf.size(ex["endings"])), ex["endings"])
    inputs = tf.strings.join([join_fields("hellaswag", [("context", ex["context"])]), endings], separator=" ")
    # TFDS keeps HellaSwag's label as a plain integer (no ClassLabel), so it is written as a number.
    label = tf.cast(ex["label"], tf.int64)
    return {"inputs": inputs, "targets": _index_target(label), "label": label}


@seqio.map_over_dataset
def cosmosqa(ex: Example) -> dict:
    keys = ("context", "question", "answer0", "answer1", "answer2", "answer3")
    label = tf.cast(ex["label"], tf.int64)
    return {
        "inputs": join_fields("cosmos_qa", [(k, ex[k]) for k in keys]),
        "targets": _index_target(label),
        "label": label,
    }


def race(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """RACE articles -> one example per question; `label` is the answer's option index (-1 if none)."""

    def questions(ex: Example) -> dict:
        options = ex["options"]  # [questions, options]
        shape = tf.shape(options)
        option_letters = tf.broadcast_to(letters(shape[1])[None], shape)
        option_text = tf.strings.reduce_join(
            tf.strings.join([option_letters, options], separator=": "), axis=1, separator=" "
        )
        inputs = tf.strings.join(
            ["race question:", ex["questions"], "options:", option_text, "article:", ex["article"]], separator=" "
        )
        is_answer = tf.equal(option_letters, ex["answers"][:, None])
        label = tf.where(
            tf.reduce_any(is_answer, axis=1), tf.argmax(tf.cast(is_answer, tf.int64), axis=1), tf.constant(-1, tf.int64)
        )
        return {"inputs": inputs, "targets": ex["answers"], "label": label}

    return dataset.map(questions, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _register() -> None:
    def text(*keys: str) -> dict:
        return {k: _TEXT for k in keys}

    registry.add_task(
        RawData(
            "winogrande",
            {**text("sentence", "option1", "option2"), "label": _LABEL},
            tfds_names=("winogrande:1.2.0",),
            train_split="train_xl",
        ),
        "multiple_choice",
        winogrande,
    )
    registry.add_task(
        RawData("hellaswag", {**text("context"), "endings": _TEXTS, "label": _LABEL}, tfds_names=("hellaswag:1.1.0",)),
        "multiple_choice",
        hellaswag,
    )
    registry.add_task(
        RawData(
            "cosmosqa",
            {**text("context", "question", "answer0", "answer1", "answer2", "answer3"), "label": _LABEL},
            tfds_names=("cosmos_qa:1.0.0",),
        ),
        "multiple_choice",
        cosmosqa,
    )
    registry.add_task(
        RawData(
            "race",
            {
                **text("article"),
                "questions": _TEXTS,
                "answers": _TEXTS,
                "options": tf.TensorSpec([None, None], tf.string),
            },
            tfds_names=("race/high:2.0.0", "race/middle:2.0.0"),
            heldout_split="dev",
        ),
        "multiple_choice",
        race,
    )


_register()
