"""The SuperGLUE tasks (TFDS super_glue/*:1.0.2): boolq, cb, copa, wic, multirc, record, wsc.

Formats follow T5 (t5/data/preprocessors.py, glue_utils.py):
- boolq, cb, copa: "<task> key: value ..." with the raw text fields in alphabetical order; wic names its
  order "sentence1, sentence2, word" (its character offsets are not used);
- multirc: one row per answer option, "multirc question: .. answer: .. paragraph: .." with <br> turned into
  a space and <b>, </b> removed -> False/True; `group` is the question index (a question's options form one
  group for the exact-match metric);
- record: "record query: .. entities: e1, e2 passage: .." where each "\\n@highlight\\n" becomes a sentence
  break; training has one example per gold answer, evaluation one per question (target: the first answer),
  with `answers` (every gold answer) and `group` (the query index) for the metric;
- wsc (wsc.fixed): "wsc: <text with the pronoun marked *he*>" -> span1_text, the candidate referent; training
  keeps only rows whose candidate is the referent (label 1), evaluation keeps every row with its `label`.
"""

import seqio
import tensorflow as tf

from tasks import preprocessors, registry
from tasks.preprocessors import UNKNOWN, Example, join_fields
from tasks.sources import RawData

_TEXT = tf.TensorSpec([], tf.string)
_TEXTS = tf.TensorSpec([None], tf.string)
_LABEL = tf.TensorSpec([], tf.int64)
_INDEX = tf.TensorSpec([], tf.int32)


def _raw(name: str, features: dict) -> RawData:
    tfds_config = "wsc.fixed" if name == "wsc" else name
    return RawData(name, features=features, tfds_names=(f"super_glue/{tfds_config}:1.0.2",))


@seqio.map_over_dataset
def multirc(ex: Example) -> dict:
    inputs = join_fields("multirc", [(k, ex[k]) for k in ("question", "answer", "paragraph")])
    inputs = tf.strings.regex_replace(inputs, "<br>", " ")
    inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
    label = tf.cast(ex["label"], tf.int64)
    return {
        "inputs": inputs,
        "targets": preprocessors.class_target(label, registry.label_names("multirc")),
        "label": label,
        "group": tf.cast(ex["idx"]["question"], tf.int64),
    }


def _record_passage(passage: tf.Tensor) -> tf.Tensor:
    """Turns the "\\n@highlight\\n" separators of a ReCoRD passage into sentence breaks (as T5)."""
    passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """ReCoRD rows -> one example per gold answer (training) or per question (evaluation)."""

    def examples(ex: Example) -> dict:
        answers = ex["answers"]
        targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant([UNKNOWN]))
        targets = tf.cond(ex["is_train"], lambda: targets, lambda: targets[:1])
        n = tf.size(targets)
        inputs = join_fields(
            "record",
            [
                ("query", ex["query"]),
                ("entities", tf.strings.reduce_join(ex["entities"], separator=", ")),
                ("passage", _record_passage(ex["passage"])),
            ],
        )
        return {
            "inputs": tf.fill([n], inputs),
            "targets": targets,
            "answers": tf.tile(answers[None], [n, 1]),
            "group": tf.fill([n], tf.cast(ex["idx"]["query"], tf.int64)),
        }

    return dataset.map(examples, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


# The one WSC text (super_glue/wsc.fixed) whose marked form T5 writes by hand, in its `_wsc_inputs`, with
# other spacing than the text's own: its pronoun is the word 'him,"', which T5 writes 'him ,"', and T5 drops
# the text's trailing space. Looked up so the inputs are T5's exactly. (The other text T5 writes by hand,
# "... might want to use it , but ...", comes out the same from the rule of `mark_pronoun`.)
_T5_MARKED_TEXTS = {
    (
        "The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite loud. "
        '"Good for him," he said. '
    ): (
        "The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite loud. "
        '"Good for *him* ," he said.'
    ),
}


def mark_pronoun(text: tf.Tensor, pronoun: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Marks the pronoun of a WSC text as *pronoun* (T5's wsc_simple inputs).

    The text is split on single spaces (so it is rebuilt exactly) and the marked word is the one at `index`,
    the pronoun's word index. Where that word is not the pronoun (T5 fails an assertion there, except in the
    two rows of the data it writes by hand), the nearest word equal to the pronoun once the punctuation at its
    ends is set aside is marked instead ("use it" -> "use *it*"), and the word at `index` when none is. The
    row of `_T5_MARKED_TEXTS` gets T5's hand-written text.

    Args:
      text: [] the WSC text.
      pronoun: [] span2_text.
      index: [] span2_index.

    Returns:
      [] the text with the pronoun's word marked.
    """
    words = tf.strings.split(text, sep=" ")
    cores = tf.strings.regex_replace(words, r"^\W+|\W+$", "")
    matches = tf.cast(tf.where(tf.equal(cores, pronoun))[:, 0], tf.int32)
    index = tf.cast(index, tf.int32)
    index = tf.cond(
        tf.size(matches) > 0,
        lambda: tf.gather(matches, tf.argmin(tf.abs(matches - index))),
        lambda: tf.clip_by_value(index, 0, tf.size(words) - 1),
    )
    marked = tf.strings.regex_replace(words[index], r"^(\W*)(.*?)(\W*)$", r"\1*\2*\3")
    marked_text = tf.strings.reduce_join(tf.tensor_scatter_nd_update(words, [[index]], [marked]), separator=" ")
    for t5_text, t5_marked in _T5_MARKED_TEXTS.items():
        marked_text = tf.where(tf.equal(text, t5_text), t5_marked, marked_text)
    return marked_text


def wsc(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """WSC rows -> "wsc: .. *pronoun* .." -> the candidate referent span1_text (with `label`)."""

    def example(ex: Example) -> dict:
        inputs = tf.strings.join(["wsc:", mark_pronoun(ex["text"], ex["span2_text"], ex["span2_index"])], separator=" ")
        return {"inputs": inputs, "targets": ex["span1_text"], "label": tf.cast(ex["label"], tf.int64)}

    dataset = dataset.filter(lambda ex: tf.logical_not(ex["is_train"]) | tf.equal(ex["label"], 1))
    return dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE)


def _register() -> None:
    text_fields = {
        "boolq": ("passage", "question"),
        "cb": ("hypothesis", "premise"),
        "copa": ("choice1", "choice2", "premise", "question"),
        "wic": ("sentence1", "sentence2", "word"),  # T5's order, not alphabetical.
    }
    for name, keys in text_fields.items():
        registry.add_task(
            _raw(name, {**{k: _TEXT for k in keys}, "label": _LABEL}),
            "super_glue",
            preprocessors.key_value(name, keys, registry.label_names(name)),
        )
    multirc_fields = {
        "paragraph": _TEXT,
        "question": _TEXT,
        "answer": _TEXT,
        "label": _LABEL,
        "idx": {"question": _INDEX},
    }
    registry.add_task(_raw("multirc", multirc_fields), "super_glue", multirc)
    record_fields = {"passage": _TEXT, "query": _TEXT, "entities": _TEXTS, "answers": _TEXTS, "idx": {"query": _INDEX}}
    registry.add_task(_raw("record", record_fields), "super_glue", record)
    wsc_fields = {"text": _TEXT, "span1_text": _TEXT, "span2_text": _TEXT, "span2_index": _INDEX, "label": _LABEL}
    registry.add_task(_raw("wsc", wsc_fields), "super_glue", wsc)


_register()
