"""The NNX T5 and `hf.load_t5` against Hugging Face's PyTorch `T5ForConditionalGeneration`.

Tiny random models are saved with `save_pretrained`; each is compared with ours loaded from its folder.
"""

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from sharpt_jax import hf
from sharpt_jax.models import t5

# name -> (feed_forward_proj, untied lm_head). 'v1.1-tied' is what transformers 5 builds from a v1.1 config:
# the output layer tied to the embedding but without the v1.0 rescaling.
VARIANTS = {"v1.0": ("relu", False), "v1.1": ("gated-gelu", True), "v1.1-tied": ("gated-gelu", False)}
VOCAB, D_MODEL, PROMPT_LEN = 100, 32, 4


def max_rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def save_hf_t5(folder, variant: str, seed: int = 0) -> transformers.T5ForConditionalGeneration:
    """Saves a tiny random Hugging Face T5 of `variant` into `folder`; returns it in eval mode."""
    feed_forward_proj, untied = VARIANTS[variant]
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        # Few buckets and a short max distance, so that short test sequences reach the logarithmic buckets.
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=not untied,
        decoder_start_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    if untied:  # transformers 5 always ties at construction; a real v1.1 checkpoint has its own lm_head.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, D_MODEL))
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(variant, HF model, its folder, our model loaded from that folder)."""
    folder = tmp_path_factory.mktemp(request.param)
    ref = save_hf_t5(folder, request.param)
    return request.param, ref, folder, hf.load_t5(folder)


def padded_batch(seed: int = 0):
    """input_ids [3, 12] with 12, 7 and 3 real tokens; decoder ids [3, 6] with 6, 4 and 6 real tokens."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(2, VOCAB, (3, 12))
    mask = (np.arange(12)[None] < np.array([[12], [7], [3]])).astype(np.int64)
    decoder_ids = rng.integers(2, VOCAB, (3, 6))
    decoder_ids[:, 0] = 0
    decoder_mask = (np.arange(6)[None] < np.array([[6], [4], [6]])).astype(np.int64)
    return input_ids * mask, mask, decoder_ids * decoder_mask, decoder_mask


def hf_logits(ref, mask, decoder_ids, decoder_mask, input_ids=None, inputs_embeds=None):
    with torch.no_grad():
        return ref(
            input_ids=None if input_ids is None else torch.tensor(input_ids),
            inputs_embeds=inputs_embeds,
            attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(decoder_ids),
            decoder_attention_mask=torch.tensor(decoder_mask),
        ).logits.numpy()


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (16, 50)])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    relative = np.arange(-400, 401)
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional, num_buckets, max_distance
    ).numpy()
    ours = t5.relative_position_bucket(jnp.asarray(relative), bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_logits_match_hf_on_padded_batch(pair):
    variant, ref, _, model = pair
    assert (model.lm_head is not None) == VARIANTS[variant][1]
    input_ids, mask, decoder_ids, decoder_mask = padded_batch()
    expected = hf_logits(ref, mask, decoder_ids, decoder_mask, input_ids=input_ids)
    logits = model(*map(jnp.asarray, (input_ids, decoder_ids, mask, decoder_mask)))
    assert logits.dtype == jnp.float32 and logits.shape == (3, 6, VOCAB)
    real = decoder_mask.astype(bool)  # Padded decoder positions are never scored.
    assert max_rel_err(np.asarray(logits)[real], expected[real]) < 1e-4


def test_encode_matches_hf_encoder_and_decode_splits_call(pair):
    _, ref, _, model = pair
    input_ids, mask, decoder_ids, decoder_mask = padded_batch(seed=1)
    with torch.no_grad():
        expected = ref.encoder(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(mask))
    encoded, encoder_mask = model.encode(jnp.asarray(input_ids), jnp.asarray(mask))
    real = mask.astype(bool)
    assert max_rel_err(np.asarray(encoded)[real], expected.last_hidden_state.numpy()[real]) < 1e-4
    np.testing.assert_array_equal(np.asarray(encoder_mask), mask)
    split = model.decode(jnp.asarray(decoder_ids), encoded, encoder_mask, jnp.asarray(decoder_mask))
    whole = model(*map(jnp.asarray, (input_ids, decoder_ids, mask, decoder_mask)))
    np.testing.assert_allclose(np.asarray(split), np.asarray(whole), rtol=1e-6, atol=1e-6)


def test_prompt_embeds_match_hf_inputs_embeds(pair):
    _, ref, _, model = pair
    input_ids, mask, decoder_ids, decoder_mask = padded_batch(seed=2)
    prompt = np.random.default_rng(3).normal(size=(3, PROMPT_LEN, D_MODEL)).astype(np.float32)
    full_mask = np.concatenate([np.ones((3, PROMPT_LEN), np.int64), mask], axis=1)
    with torch.no_grad():
        embeds = torch.cat([torch.tensor(prompt), ref.shared(torch.tensor(input_ids))], dim=1)
    expected = hf_logits(ref, full_mask, decoder_ids, decoder_mask, inputs_embeds=embeds)
    encoded, encoder_mask = model.encode(jnp.asarray(input_ids), jnp.asarray(mask), jnp.asarray(prompt))
    assert encoded.shape == (3, PROMPT_LEN + 12, D_MODEL)
    np.testing.assert_array_equal(np.asarray(encoder_mask), full_mask)
    logits = model(
        jnp.asarray(input_ids),
        jnp.asarray(decoder_ids),
        jnp.asarray(mask),
        jnp.asarray(decoder_mask),
        prompt_embeds=jnp.asarray(prompt),
    )
    real = decoder_mask.astype(bool)
    assert max_rel_err(np.asarray(logits)[real], expected[real]) < 1e-4


@pytest.mark.parametrize("pair", ["v1.0", "v1.1"], indirect=True)
def test_bfloat16_runs_close_to_float32_reference(pair):
    _, ref, folder, _ = pair
    model = hf.load_t5(folder, dtype=jnp.bfloat16)
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    input_ids, mask, decoder_ids, decoder_mask = padded_batch()
    expected = hf_logits(ref, mask, decoder_ids, decoder_mask, input_ids=input_ids)
    logits = nnx.jit(lambda m, *args: m(*args))(
        model, jnp.asarray(input_ids), jnp.asarray(decoder_ids), jnp.asarray(mask), jnp.asarray(decoder_mask)
    )
    assert logits.dtype == jnp.float32
    real = decoder_mask.astype(bool)
    assert max_rel_err(np.asarray(logits)[real], expected[real]) < 5e-2


@pytest.mark.parametrize("pair", ["v1.0", "v1.1"], indirect=True)
def test_bfloat16_backbone_computes_its_output_layer_in_float32(pair):
    """Tied (v1.0, with the d_model**-0.5 scale) and untied (v1.1) output layers of a bfloat16 T5: the logits
    are float64 `hidden @ table` of the bfloat16 weights to float32 precision, far finer than bfloat16's
    1/128 relative steps (a bfloat16 matmul misses by ~1e-2 of the logits' scale)."""
    _, _, folder, _ = pair
    model = hf.load_t5(folder, dtype=jnp.bfloat16)
    hidden = jax.random.normal(jax.random.key(0), (2, 3, model.config.d_model), jnp.bfloat16)
    logits = model._logits(hidden)
    assert logits.dtype == jnp.float32
    x = np.asarray(hidden, np.float64)
    if model.config.scale_decoder_outputs:
        x = x * model.config.d_model**-0.5
    table = model.shared.embedding[...].T if model.lm_head is None else model.lm_head.kernel[...]
    expected = x @ np.asarray(table, np.float64)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("pair", ["v1.1"], indirect=True)
def test_dropout_only_with_rngs_and_reproducible(pair):
    _, _, _, model = pair
    input_ids, mask, decoder_ids, _ = padded_batch()
    args = (jnp.asarray(input_ids), jnp.asarray(decoder_ids), jnp.asarray(mask))
    run = nnx.jit(lambda model, key: model(*args, rngs=nnx.Rngs(dropout=key)))
    plain = model(*args)
    # 'rbg' keys, as the trainer uses (optim.dropout_key).
    first, again, other = (run(model, jax.random.key(seed, impl="rbg")) for seed in (1, 1, 2))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(np.asarray(first), np.asarray(plain), atol=1e-3)
    assert not np.allclose(np.asarray(first), np.asarray(other), atol=1e-3)


def test_every_parameter_has_its_logical_axes(pair):
    _, _, _, model = pair
    rules = [
        (r"shared/embedding", ("vocab", "embed")),
        (r"lm_head/kernel", ("embed", "vocab")),
        (r".*/relpos", ("relpos", "heads")),
        (r".*_attn/[qkv]/kernel", ("embed", "heads")),
        (r".*_attn/o/kernel", ("heads", "embed")),
        (r".*/ffn/wi(_0|_1)?/kernel", ("embed", "mlp")),
        (r".*/ffn/wo/kernel", ("mlp", "embed")),
        (r".*norm/scale", ("embed",)),
    ]
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = "/".join(str(k) for k in path)
        expected = next(axes for pattern, axes in rules if re.fullmatch(pattern, name))
        assert variable.get_metadata()["out_sharding"] == expected, name


# ---------------------------------------------------------------------------------------------
# Loading: other file layouts and clear errors.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v11_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v11_for_errors")
    save_hf_t5(folder, "v1.1", seed=1)
    return folder


def logits_of(model):
    input_ids, mask, decoder_ids, _ = padded_batch()
    return np.asarray(model(jnp.asarray(input_ids), jnp.asarray(decoder_ids), jnp.asarray(mask)))


def test_pytorch_bin_with_tied_copies_loads(tmp_path):
    ref = save_hf_t5(tmp_path / "safetensors", "v1.0")
    folder = tmp_path / "bin"
    ref.config.save_pretrained(folder)
    state = ref.state_dict()  # Holds every tied copy: encoder/decoder.embed_tokens.weight and lm_head.weight.
    assert {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"} <= set(state)
    torch.save(state, folder / "pytorch_model.bin")
    input_ids, mask, decoder_ids, decoder_mask = padded_batch()
    expected = hf_logits(ref, mask, decoder_ids, np.ones_like(decoder_mask), input_ids=input_ids)
    assert max_rel_err(logits_of(hf.load_t5(folder)), expected) < 1e-4


def test_v11_config_written_before_transformers_5(v11_folder, tmp_path):
    """Hub v1.1 / LM-adapted configs say tie_word_embeddings=false and have no scale_decoder_outputs."""
    folder = tmp_path / "old"
    shutil.copytree(v11_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is True  # transformers 5 writes this for every T5.
    del config["scale_decoder_outputs"]
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config))
    old = hf.load_t5(folder)
    assert old.lm_head is not None and not old.config.scale_decoder_outputs
    np.testing.assert_array_equal(logits_of(old), logits_of(hf.load_t5(v11_folder)))


def edited_copy(src, dst, config_edit=None, weights_edit=None):
    shutil.copytree(src, dst)
    if config_edit:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    if weights_edit:
        weights = load_file(dst / "model.safetensors")
        weights_edit(weights)
        save_file(weights, dst / "model.safetensors")
    return dst


def test_missing_config_is_a_clear_error(v11_folder, tmp_path):
    folder = edited_copy(v11_folder, tmp_path / "f")
    (folder / "config.json").unlink()
    with pytest.raises(hf.CheckpointError, match=r"config\.json: missing"):
        hf.load_t5(folder)


def test_no_weights_is_a_clear_error(v11_folder, tmp_path):
    folder = edited_copy(v11_folder, tmp_path / "f")
    (folder / "model.safetensors").unlink()
    with pytest.raises(hf.CheckpointError, match="no weights"):
        hf.load_t5(folder)


def test_shape_mismatch_names_file_and_parameter(v11_folder, tmp_path):
    def widen(config):
        config["d_ff"] = 64

    folder = edited_copy(v11_folder, tmp_path / "f", config_edit=widen)
    message = r"model\.safetensors: shape mismatch for '.*wi_0\.weight'.*config expects \(32, 64\)"
    with pytest.raises(hf.CheckpointError, match=message):
        hf.load_t5(folder)


def test_missing_weight_names_file_and_parameter(v11_folder, tmp_path):
    def drop(weights):
        del weights["decoder.block.2.layer.1.EncDecAttention.v.weight"]

    folder = edited_copy(v11_folder, tmp_path / "f", weights_edit=drop)
    message = r"model\.safetensors: missing weight 'decoder\.block\.2\.layer\.1\.EncDecAttention\.v\.weight'"
    with pytest.raises(hf.CheckpointError, match=message):
        hf.load_t5(folder)


def test_unused_weight_names_file_and_parameter(v11_folder, tmp_path):
    def add(weights):
        # Only block 0 carries a position bias: a second one is a variant we do not implement.
        weights["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = np.zeros((8, 4))

    folder = edited_copy(v11_folder, tmp_path / "f", weights_edit=add)
    message = r"model\.safetensors: unused weights.*encoder\.block\.1\.layer\.0\.SelfAttention\.relative"
    with pytest.raises(hf.CheckpointError, match=message):
        hf.load_t5(folder)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("model_type", "bart", "model_type 'bart'"),
        ("feed_forward_proj", "gated-silu", "feed_forward_proj 'gated-silu'"),
    ],
)
def test_unsupported_architecture_is_a_clear_error(v11_folder, tmp_path, field, value, message):
    folder = edited_copy(v11_folder, tmp_path / "f", config_edit=lambda config: config.update({field: value}))
    with pytest.raises(hf.CheckpointError, match=rf"config\.json: {message} is not supported"):
        hf.load_t5(folder)
