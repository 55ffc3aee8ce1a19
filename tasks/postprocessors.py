"""Postprocessors: decoded strings (and the example they belong to) -> values the metrics compare.

Every function has seqio's postprocessor signature `fn(output_or_target, example=None, is_target=False)`.
seqio calls it once with the target string (`is_target=True`) and once with the model's decoded output, both
times with the preprocessed example as NumPy values (`targets_pretokenized` as bytes, `label` and `group` as
int64, `answers` as an array of bytes). Strings may arrive as `bytes` or `str`; both are accepted.

The rules follow T5 (t5/data/postprocessors.py): a class string that is not one of the label names becomes -1
and so counts as wrong; a number string that does not parse becomes -1; QA targets are every gold answer;
ReCoRD and MultiRC values carry their group so the metric can deduplicate or group; WSC uses `wsc_simple`.
"""

import math
from collections.abc import Sequence

import numpy as np

INVALID = -1

# Words `wsc_simple` ignores when it compares a predicted referent with the true one (T5's list).
_DETERMINERS = frozenset(
    {
        "a",
        "an",
        "few",
        "her",
        "his",
        "each",
        "every",
        "many",
        "much",
        "my",
        "our",
        "some",
        "that",
        "the",
        "their",
        "these",
        "this",
        "those",
        "which",
        "whose",
        "your",
    }
)


def as_text(value) -> str:
    """Returns `value` (str, bytes, or a NumPy scalar of either) as a str."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"expected str or bytes, got {type(value).__name__}: {value!r}")


def _field(example, key: str):
    if example is None or key not in example:
        raise ValueError(f"this postprocessor needs the example's {key!r} field (got example={example!r})")
    return example[key]


def class_id(output, example=None, is_target=False, *, label_names: Sequence[str]) -> int:
    """Returns the index of the label string in `label_names`, or -1 (counted wrong) when it is none of them.

    Bind `label_names` with functools.partial. Only the exact string counts, as in T5's
    `string_label_to_class_id`: " True" and "true" are invalid.
    """
    del example, is_target
    text = as_text(output)
    return label_names.index(text) if text in label_names else INVALID


def words(output, example=None, is_target=False) -> str:
    """Returns the text with its words separated by single spaces (free-text answers of file-backed tasks)."""
    del example, is_target
    return " ".join(as_text(output).split())


def number(output, example=None, is_target=False) -> float:
    """Returns the float written in the string (STS-B, CxC), or -1 when it is not a finite number."""
    del example, is_target
    try:
        value = float(as_text(output))
    except ValueError:
        return float(INVALID)
    return value if math.isfinite(value) else float(INVALID)


def _answers(example) -> list[str]:
    return [as_text(a) for a in _field(example, "answers")]


def qa(output, example=None, is_target=False) -> list[str] | str:
    """SQuAD/DROP: the target becomes every gold answer of `example['answers']`; a prediction stays a str."""
    return _answers(example) if is_target else as_text(output)


def record(output, example=None, is_target=False) -> dict:
    """ReCoRD: {"group": query index, "value": all gold answers (target) or the predicted str}.

    Training has one example per gold answer of a query; the group lets the metric score each query once.
    """
    group = int(_field(example, "group"))
    return {"group": group, "value": _answers(example) if is_target else as_text(output)}


def multirc(output, example=None, is_target=False) -> dict:
    """MultiRC: {"group": question index, "value": class id of False/True (-1 when invalid)}."""
    del is_target
    return {"group": int(_field(example, "group")), "value": class_id(output, label_names=("False", "True"))}


def _clean_referent(text: str) -> str:
    """Lower-cased, stripped, words split on single spaces, determiners dropped, joined on spaces again.

    As T5's `wsc_simple`: only " " separates words, so a tab or a newline inside the text stays part of a word
    and a run of spaces leaves empty words.
    """
    return " ".join(w for w in text.strip().lower().split(" ") if w not in _DETERMINERS)


def wsc_simple(output, example=None, is_target=False) -> int:
    """WSC: the target is the example's label (1 if span1 is the pronoun's referent); a prediction becomes 1
    if the predicted words name span1 (`targets_pretokenized`), 0 if not, and -1 (wrong whatever the label)
    when nothing is left of it after cleaning (empty, blank or only determiners).

    T5's rules: case and determiners are ignored; a possessive on one side only ("Bob" vs "Bob's hat") is a
    mismatch; otherwise either word set containing the other is a match ("fuzzy bunny" vs "bunny").
    """
    if is_target:
        return int(_field(example, "label"))
    prediction = _clean_referent(as_text(output))
    if not prediction:
        return INVALID
    referent = _clean_referent(as_text(_field(example, "targets_pretokenized")))
    if ("'" in prediction) != ("'" in referent):
        return 0
    predicted, true = set(prediction.split(" ")), set(referent.split(" "))
    return int(predicted <= true or true <= predicted)
