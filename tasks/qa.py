"""Extractive and abstractive question answering: squad (SPoT's TFDS mrqa/squad:1.0.0) and drop (drop:2.0.0).

- squad: T5's SQuAD format with the task name in front, punctuation padded with spaces and whitespace
  collapsed in the question, the context and every answer: "squad question: .. context: .." -> the first
  answer; `answers` keeps every gold answer (padded alike) for the max-over-answers EM/F1.
- drop (a proposal in T5 style, no released SPoT code): "drop question: .. context: <passage>" -> the
  answer; `answers` holds the answer followed by the validated answers. DROP's held-out split is "dev".
Both always decode: the answer is free text.
"""

import seqio
import tensorflow as tf

from tasks import registry
from tasks.preprocessors import UNKNOWN, Example, join_collapsed, join_fields, pad_punctuation
from tasks.sources import RawData

_TEXT = tf.TensorSpec([], tf.string)
_TEXTS = tf.TensorSpec([None], tf.string)


@seqio.map_over_dataset
def squad(ex: Example) -> dict:
    answers = pad_punctuation(ex["answers"])
    inputs = join_collapsed(
        ["squad question:", pad_punctuation(ex["question"]), "context:", pad_punctuation(ex["context"])]
    )
    # The first answer ("<unk>" in the unlikely row without any).
    return {"inputs": inputs, "targets": tf.concat([answers, [UNKNOWN]], axis=0)[0], "answers": answers}


@seqio.map_over_dataset
def drop(ex: Example) -> dict:
    inputs = join_fields("drop", [("question", ex["question"]), ("context", ex["passage"])])
    answers = tf.concat([ex["answer"][None], ex["validated_answers"]], axis=0)
    return {"inputs": inputs, "targets": ex["answer"], "answers": answers}


def _register() -> None:
    registry.add_task(
        RawData(
            "squad", features={"question": _TEXT, "context": _TEXT, "answers": _TEXTS}, tfds_names=("mrqa/squad:1.0.0",)
        ),
        "qa",
        squad,
    )
    registry.add_task(
        RawData(
            "drop",
            features={"question": _TEXT, "passage": _TEXT, "answer": _TEXT, "validated_answers": _TEXTS},
            tfds_names=("drop:2.0.0",),
            heldout_split="dev",
        ),
        "qa",
        drop,
    )


_register()
