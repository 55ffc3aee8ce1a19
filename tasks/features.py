"""Vocabularies, output features and the feature converter of the SharPT input pipeline.

Every task has three output features:
- `inputs` and `targets`: the T5 SentencePiece vocabulary, EOS appended (T5's conventions);
- `instance_inputs`: the same input text the T5 sees, tokenised for the instance encoder with its WordPiece
  vocabulary the way an uncased BERT expects it: `[CLS] pieces [SEP]`, lower-cased, [SEP] playing the role of
  EOS so that seqio's `append_eos_after_trim` keeps it when a long input is truncated.

The vocabulary files are resolved lazily: a `LazyVocabulary` asks a getter for the file on first use, so
registering the tasks reads no file, and `tasks.configure(...)` can point every registered task at new files.
`SharPTFeatureConverter` turns task features into the model features (no packing: each example keeps its own
row, which the instance encoder needs).
"""

import functools
from collections.abc import Callable, Mapping

import seqio
import tensorflow as tf
import tensorflow_text as tf_text
from seqio import feature_converters

CLS, SEP, UNK, PAD = "[CLS]", "[SEP]", "[UNK]", "[PAD]"


class WordPieceVocabulary(seqio.Vocabulary):
    """An uncased BERT WordPiece vocabulary read from a `vocab.txt` (one token per line, [PAD] first).

    `encode` gives `[CLS] pieces` (lower-cased, accents stripped, punctuation split, as BERT's uncased
    tokenizer); `eos_id` is [SEP], which seqio appends (`add_eos=True`).
    """

    def __init__(self, vocab_file: str):
        super().__init__(extra_ids=0)
        self._vocab_file = str(vocab_file)
        with tf.io.gfile.GFile(self._vocab_file) as f:
            self._tokens = f.read().splitlines()
        ids = {token: i for i, token in enumerate(self._tokens)}
        missing = [t for t in (CLS, SEP, UNK, PAD) if t not in ids]
        if missing or ids[PAD] != seqio.vocabularies.PAD_ID:
            raise ValueError(f"{vocab_file}: not a BERT vocab.txt (missing {missing} or [PAD] is not id 0)")
        self._cls_id, self._sep_id, self._unk_id = ids[CLS], ids[SEP], ids[UNK]
        # Decoding drops the special tokens (seqio's decode keeps the EOS, [SEP], before cutting after it).
        self._surface = ["" if t in (PAD, CLS, SEP) else t for t in self._tokens]

    @functools.cached_property
    def _tokenizer(self) -> tuple[tf_text.FastBertNormalizer, tf_text.FastWordpieceTokenizer]:
        # Built eagerly even when first used while tracing a dataset function, so that it outlives that
        # function's graph and every later dataset can capture it. The fast ops (BERT's basic tokenizer and
        # WordPiece in one op) give the ids of BertTokenizer and trace in a fraction of its time.
        with tf.init_scope():
            return (
                tf_text.FastBertNormalizer(lower_case_nfd_strip_accents=True),
                tf_text.FastWordpieceTokenizer(
                    self._tokens, token_out_type=tf.int64, unknown_token=UNK, no_pretokenization=False
                ),
            )

    @property
    def eos_id(self) -> int:
        return self._sep_id

    @property
    def unk_id(self) -> int:
        return self._unk_id

    @property
    def _base_vocab_size(self) -> int:
        return len(self._tokens)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """s: a string scalar ([]) or vector ([batch]) -> int32 ids [len] or ragged [batch, len]."""
        normalizer, wordpiece = self._tokenizer
        texts = tf.reshape(s, [-1])
        pieces = wordpiece.tokenize(normalizer.normalize(texts))  # [batch, len]
        cls = tf.fill([tf.shape(texts)[0], 1], tf.constant(self._cls_id, tf.int64))
        ids = tf.cast(tf.concat([cls, pieces], axis=1), tf.int32)
        return ids[0] if s.shape.rank == 0 else ids

    def _encode(self, s: str) -> list[int]:
        return self._encode_tf(tf.constant(s)).numpy().tolist()

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """ids: [len] or [batch, len] -> the text, word pieces merged ([] or [batch])."""
        pieces = tf.gather(tf.constant(self._surface), ids)
        text = tf.strings.reduce_join(pieces, axis=-1, separator=" ")
        text = tf.strings.regex_replace(text, r" ##", "")
        return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))

    def _decode(self, ids) -> str:
        return " ".join(self._surface[i] for i in ids if self._surface[i]).replace(" ##", "")

    def __eq__(self, other) -> bool:
        return isinstance(other, WordPieceVocabulary) and other._vocab_file == self._vocab_file

    def __hash__(self) -> int:
        return hash(self._vocab_file)


@functools.cache
def _vocabulary(kind: str, path: str) -> seqio.Vocabulary:
    if kind == "t5":
        return seqio.SentencePieceVocabulary(path)
    return WordPieceVocabulary(path)


class LazyVocabulary(seqio.Vocabulary):
    """Stands for the vocabulary whose file `path_fn()` names at the time of use (T5 or WordPiece).

    One instance is shared by every task, so `tasks.configure` changes the vocabulary of all of them; the
    vocabulary behind each file is built once.
    """

    def __init__(self, kind: str, path_fn: Callable[[], str | None]):
        if kind not in ("t5", "encoder"):
            raise ValueError(f"kind must be 't5' or 'encoder', got {kind!r}")
        super().__init__(extra_ids=0)
        self._kind, self._path_fn = kind, path_fn

    @property
    def vocabulary(self) -> seqio.Vocabulary:
        path = self._path_fn()
        if path is None:
            what = "a T5 SentencePiece model" if self._kind == "t5" else "the instance encoder's vocab.txt"
            raise ValueError(
                f"no {self._kind} vocabulary configured: call tasks.configure({self._kind}_vocab=PATH) with {what}"
            )
        return _vocabulary(self._kind, str(path))

    @property
    def eos_id(self) -> int:
        return self.vocabulary.eos_id

    @property
    def unk_id(self) -> int:
        return self.vocabulary.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self.vocabulary.vocab_size

    def _encode(self, s):
        return self.vocabulary.encode(s)

    def _decode(self, ids):
        return self.vocabulary.decode(ids)

    def _encode_tf(self, s):
        return self.vocabulary.encode_tf(s)

    def _decode_tf(self, ids):
        return self.vocabulary.decode_tf(ids)


def output_features(t5_vocab: seqio.Vocabulary, encoder_vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """The task output features: `inputs`, `targets` (T5) and `instance_inputs` (encoder), all with EOS."""
    return {
        "inputs": seqio.Feature(t5_vocab, add_eos=True),
        "targets": seqio.Feature(t5_vocab, add_eos=True),
        "instance_inputs": seqio.Feature(encoder_vocab, add_eos=True),
    }


@seqio.map_over_dataset
def tokenize(example: Mapping[str, tf.Tensor], output_features: Mapping[str, seqio.Feature]) -> dict:
    """Tokenises the `inputs` and `targets` strings, and `inputs` again as `instance_inputs`.

    Keeps the strings as `inputs_pretokenized` / `targets_pretokenized` and every other field as it is.
    """
    out = dict(example)
    for key in ("inputs", "targets"):
        out[f"{key}_pretokenized"] = example[key]
        out[key] = output_features[key].vocabulary.encode_tf(example[key])
    out["instance_inputs"] = output_features["instance_inputs"].vocabulary.encode_tf(example["inputs"])
    return out


class SharPTFeatureConverter(seqio.EncDecFeatureConverter):
    """Task features {inputs [T], targets [S], instance_inputs [I]} -> the model features (int32).

    encoder_input_tokens [B, T], encoder_input_mask [B, T] (1 on real tokens), decoder_input_tokens [B, S]
    (targets shifted right, starting with 0), decoder_target_tokens [B, S], decoder_loss_weights [B, S],
    instance_input_tokens [B, I], instance_input_mask [B, I]. Task feature lengths {"inputs": T,
    "targets": S, "instance_inputs": I}; examples are padded, never packed (one prompt per example).
    """

    TASK_FEATURES = {
        **seqio.EncDecFeatureConverter.TASK_FEATURES,
        "instance_inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        **seqio.EncDecFeatureConverter.MODEL_FEATURES,
        "encoder_input_mask": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "instance_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "instance_input_mask": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("SharPTFeatureConverter does not pack: each example has its own instance prompt")
        super().__init__(pack=False, **kwargs)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = dict(super()._convert_example(features))
        out["encoder_input_mask"] = feature_converters.non_padding_position(features["inputs"])
        out["instance_input_tokens"] = features["instance_inputs"]
        out["instance_input_mask"] = feature_converters.non_padding_position(features["instance_inputs"])
        return out

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        lengths["encoder_input_mask"] = task_feature_lengths["inputs"]
        lengths["instance_input_tokens"] = task_feature_lengths["instance_inputs"]
        lengths["instance_input_mask"] = task_feature_lengths["instance_inputs"]
        return lengths
