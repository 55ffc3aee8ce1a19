"""Text-to-text building blocks shared by the task families (T5's conventions).

Every format turns raw rows into {"inputs": str, "targets": str} plus the fields the postprocessors read
(`label`, `answers`, `group`; see tasks/metrics.py). The conventions, from T5's t5/data/preprocessors.py:
- `"<benchmark> key1: value1 key2: value2"`, joined with single spaces, keys in alphabetical order unless a
  format names them;
- a class label becomes its label name, a hidden label (-1) the target "<unk>";
- a similarity score becomes round(score * 5) / 5 written with one decimal ("3.4"), as T5 does for STS-B;
- SQuAD pads ASCII punctuation with spaces and collapses whitespace; SPoT's own formats (DocNLI, SQuAD)
  join their parts with whitespace collapsed.
tests/test_t5_reference.py checks these against the output of the official functions.
"""

from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

UNKNOWN = "<unk>"

Example = Mapping[str, tf.Tensor]
Format = Callable[[tf.data.Dataset], tf.data.Dataset]


def join_fields(benchmark: str, fields: Sequence[tuple[str, tf.Tensor]]) -> tf.Tensor:
    """Returns "<benchmark> key1: value1 key2: value2 ..." (a string scalar)."""
    parts = [benchmark]
    for key, value in fields:
        parts += [f"{key}:", value]
    return tf.strings.join(parts, separator=" ")


def enumerate_fields(names: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """Returns "name0: value0 name1: value1 ..." from string vectors names [n] and values [n]."""
    return tf.strings.reduce_join(tf.strings.join([names, values], separator=": "), separator=" ")


def indexed_names(prefix: str, n: tf.Tensor) -> tf.Tensor:
    """Returns [prefix0, prefix1, ..., prefix{n-1}] (a string vector [n])."""
    return tf.strings.join([prefix, tf.strings.as_string(tf.range(n))])


def letters(n: tf.Tensor) -> tf.Tensor:
    """Returns ["A", "B", ...] (a string vector [n]), the option letters of multiple-choice formats."""
    codes = tf.range(n) + ord("A")
    return tf.strings.unicode_encode(codes[:, None], "UTF-8")


def class_target(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
    """The label name of class id `label` ([] int), or "<unk>" when the label is hidden (-1)."""
    return tf.cond(
        tf.equal(label, -1), lambda: tf.constant(UNKNOWN), lambda: tf.gather(tf.constant(list(label_names)), label)
    )


def score_target(score: tf.Tensor) -> tf.Tensor:
    """round(score * 5) / 5 with one decimal ("3.4"), as T5's STS-B format.

    A hidden score (-1) becomes "-1.0", as in T5, not "<unk>": the postprocessor reads it back as -1, which
    the metrics drop like any hidden label.
    """
    return tf.strings.as_string(tf.round(tf.cast(score, tf.float32) * 5) / 5, precision=1)


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
    """Spaces around every ASCII punctuation character, whitespace runs collapsed (T5's `_pad_punctuation`).

    RE2's [[:punct:]] is ASCII only: "_" is padded, while non-ASCII letters ("é") and punctuation ("“", "—")
    stay attached to their word. RE2's \\s is ASCII whitespace too, so a no-break space is kept.
    """
    text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
    return tf.strings.regex_replace(text, r"\s+", " ")


def join_collapsed(parts: Sequence) -> tf.Tensor:
    """Joins on single spaces and collapses whitespace runs (T5's `_string_join`)."""
    return tf.strings.regex_replace(tf.strings.join(list(parts), separator=" "), r"\s+", " ")


def key_value(
    benchmark: str,
    keys: Sequence[str],
    label_names: Sequence[str] | None = None,
    score_key: str | None = None,
    collapse_whitespace: bool = False,
) -> Format:
    """The format of GLUE-style classification and similarity tasks.

    Args:
      benchmark: the first word of the inputs.
      keys: the raw text fields, in the order they appear (alphabetical unless the task names an order).
      label_names: class names in class-id order: the target is the name of `label`, and `label` is kept.
      score_key: for similarity tasks, the float field whose rounded value is the target (no `label`).
      collapse_whitespace: turn every whitespace run of the inputs into one space, as SPoT's text
        classification format does (T5's GLUE format keeps the text as it is).

    Returns:
      A dataset function: rows -> {"inputs", "targets"} (+ "label": int64 for classification).
    """
    if (label_names is None) == (score_key is None):
        raise ValueError("give exactly one of label_names (classification) and score_key (similarity)")

    @seqio.map_over_dataset
    def fn(ex: Example) -> dict:
        inputs = join_fields(benchmark, [(k, ex[k]) for k in keys])
        out = {"inputs": join_collapsed([inputs]) if collapse_whitespace else inputs}
        if label_names is None:
            out["targets"] = score_target(ex[score_key])
        else:
            out["label"] = tf.cast(ex["label"], tf.int64)
            out["targets"] = class_target(out["label"], label_names)
        return out

    return fn
