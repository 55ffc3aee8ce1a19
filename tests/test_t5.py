"""The NNX T5 and `hf.load_t5` against Hugging Face's PyTorch `T5ForConditionalGeneration`.

Tiny random models are saved with `save_pretrained`; each is compared with ours loaded from its folder, with the
layers scanned (the default) and, for 'v1.1-unroll', unrolled.
"""

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from sharpt_jax import hf, hf_weights, sharding
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


def saved_and_loaded(name: str, tmp_path_factory):
    """(variant, HF model, its folder, our model loaded from that folder) for a VARIANTS name; our model scans
    its layers, or unrolls them when the name ends in '-unroll'."""
    variant = name.removesuffix("-unroll")
    folder = tmp_path_factory.mktemp(name)
    ref = save_hf_t5(folder, variant)
    return variant, ref, folder, hf.load_t5(folder, scan_layers=not name.endswith("-unroll"))


@pytest.fixture(scope="module", params=[*VARIANTS, "v1.1-unroll"])
def pair(request, tmp_path_factory):
    """(variant, HF model, its folder, our model loaded from that folder)."""
    return saved_and_loaded(request.param, tmp_path_factory)


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
    params = nnx.state(model, nnx.Param)
    for path, variable in nnx.to_flat_state(params):
        name = "/".join(str(k) for k in path)
        expected = next(axes for pattern, axes in rules if re.fullmatch(pattern, name))
        if "/blocks/" in name:  # A stack's layers, stacked on a leading axis.
            expected = ("layers", *expected)
        assert variable.get_metadata()["out_sharding"] == expected, name
    # What the trainer places them by: the 'layers' axis is replicated, the heads are split over 'model'.
    shardings = sharding.state_shardings(params, sharding.make_mesh("4,2"))
    assert shardings["decoder"]["blocks"]["cross_attn"]["q"]["kernel"].get_value().spec == P(None, None, "model")


def assert_same_params(a: nnx.Module, b: nnx.Module):
    flat_a, flat_b = (nnx.to_flat_state(nnx.state(m, nnx.Param)) for m in (a, b))
    assert [path for path, _ in flat_a] == [path for path, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(path))


@pytest.mark.parametrize("pair", ["v1.1"], indirect=True)
def test_both_modes_hold_the_same_stacked_params(pair):
    """Loaded scanned or unrolled, a checkpoint gives identical parameters; layer i of a stacked parameter is
    Hugging Face's tensor of block i. Random initialisation does not depend on the mode either (a random
    backbone's checksum is the same)."""
    _, ref, folder, scanned = pair
    assert_same_params(scanned, hf.load_t5(folder, scan_layers=False))
    blocks = scanned.decoder.blocks
    assert blocks.cross_attn.q.kernel.shape == (3, D_MODEL, 32)
    for i, block in enumerate(ref.decoder.block):
        hf_q = block.layer[1].EncDecAttention.q.weight.detach().numpy().T
        np.testing.assert_array_equal(np.asarray(blocks.cross_attn.q.kernel[i]), hf_q)
        hf_norm = block.layer[2].layer_norm.weight.detach().numpy()
        np.testing.assert_array_equal(np.asarray(blocks.ffn_norm.scale[i]), hf_norm)
    config = scanned.config
    assert_same_params(t5.T5(config, rngs=nnx.Rngs(0)), t5.T5(config, scan_layers=False, rngs=nnx.Rngs(0)))


def prompt_loss(model, prompt, dropout_key=None):
    """Token-mean cross-entropy of the padded batch's decoder ids (as labels) given [prompt; input]."""
    input_ids, mask, decoder_ids, decoder_mask = map(jnp.asarray, padded_batch())
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    logits = model(input_ids, decoder_ids, mask, decoder_mask, prompt_embeds=prompt, rngs=rngs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, decoder_ids)
    return jnp.sum(losses * decoder_mask) / jnp.sum(decoder_mask)


# d prompt_loss / d prompt: what prompt tuning trains.
prompt_loss_and_grad = nnx.jit(lambda model, prompt, key=None: jax.value_and_grad(prompt_loss, 1)(model, prompt, key))


def hf_prompt_loss_and_grad(ref, prompt):
    """`prompt_loss` and its gradient in PyTorch, through Hugging Face's model and torch autograd."""
    input_ids, mask, decoder_ids, decoder_mask = map(torch.tensor, padded_batch())
    prompt = torch.tensor(prompt, requires_grad=True)
    embeds = torch.cat([prompt, ref.shared(input_ids)], dim=1)
    full_mask = torch.cat([torch.ones(prompt.shape[:2], dtype=mask.dtype), mask], dim=1)
    logits = ref(
        inputs_embeds=embeds,
        attention_mask=full_mask,
        decoder_input_ids=decoder_ids,
        decoder_attention_mask=decoder_mask,
    ).logits
    real = decoder_mask.bool()
    loss = torch.nn.functional.cross_entropy(logits[real], decoder_ids[real])
    loss.backward()
    return loss.item(), prompt.grad.numpy()


def a_prompt():
    return jnp.asarray(np.random.default_rng(7).normal(size=(3, PROMPT_LEN, D_MODEL)), jnp.float32)


@pytest.mark.parametrize("pair", ["v1.1"], indirect=True)
def test_prompt_gradient_matches_hf(pair):
    """The loss's gradient with respect to the prompt (what prompt tuning trains) is torch autograd's."""
    _, ref, _, model = pair
    loss, grad = prompt_loss_and_grad(model, a_prompt())
    expected_loss, expected_grad = hf_prompt_loss_and_grad(ref, np.asarray(a_prompt()))
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    assert max_rel_err(grad, expected_grad) < 1e-4


@pytest.mark.parametrize("pair", ["v1.1"], indirect=True)
def test_unrolled_and_remat_equal_scanned_with_dropout(pair):
    """The same loss, prompt gradient and dropout masks (each layer draws from its own key) whether the layers
    are scanned, unrolled, or scanned and rematerialised in the backward pass."""
    _, ref, folder, scanned = pair
    key = jax.random.key(0, impl="rbg")
    loss, grad = prompt_loss_and_grad(scanned, a_prompt(), key)
    without_dropout, _ = hf_prompt_loss_and_grad(ref, np.asarray(a_prompt()))
    assert abs(float(loss) - without_dropout) > 1e-3  # The premise: dropout is on.
    for scan_layers, remat in ((False, False), (True, True)):
        model = hf.load_t5(folder, scan_layers=scan_layers, remat=remat)
        other_loss, other_grad = prompt_loss_and_grad(model, a_prompt(), key)
        assert float(other_loss) == pytest.approx(float(loss), rel=1e-5), (scan_layers, remat)
        assert max_rel_err(other_grad, grad) < 1e-5, (scan_layers, remat)


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


def test_sharded_load_places_every_weight_in_its_sharding(v11_folder):
    """With a mesh, every weight is read into its own sharding (heads, MLP and vocabulary split over 'model'),
    holding exactly the values of the single-device load, and the model still computes Hugging Face's logits."""
    mesh = sharding.make_mesh("4,2")
    sharded, single = hf.load_t5(v11_folder, mesh=mesh), hf.load_t5(v11_folder)
    state = nnx.state(sharded, nnx.Param)
    expected = dict(nnx.to_flat_state(sharding.state_shardings(state, mesh)))
    single_values = dict(nnx.to_flat_state(nnx.state(single, nnx.Param)))
    for path, variable in nnx.to_flat_state(state):
        assert variable[...].sharding == expected[path].get_value(), path
        np.testing.assert_array_equal(np.asarray(variable[...]), np.asarray(single_values[path][...]), str(path))
    kernel = sharded.encoder.blocks.ffn.wi_0.kernel[...]  # [layers, d_model, d_ff]: d_ff split in 2 over 'model'.
    assert kernel.sharding.spec == P(None, None, "model")
    assert {shard.data.shape for shard in kernel.addressable_shards} == {(2, D_MODEL, 24)}
    assert max_rel_err(logits_of(sharded), logits_of(single)) < 1e-5  # Split sums: float rounding only.


def test_safetensors_reader_matches_the_safetensors_library(tmp_path):
    """Our header reader (lazy, no memory map) against safetensors' own loader: bfloat16, float32 and int64."""
    from safetensors.torch import load_file as torch_load_file
    from safetensors.torch import save_file as torch_save_file

    tensors = {
        "a.bf16": torch.randn(3, 5).to(torch.bfloat16),
        "b.f32": torch.randn(4, 2, 3),
        "c.i64": torch.arange(7),
    }
    torch_save_file(tensors, tmp_path / "model.safetensors")
    ours = hf_weights.safetensors_index(tmp_path / "model.safetensors")
    reference = torch_load_file(tmp_path / "model.safetensors")
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        array = np.asarray(ours[name])
        assert array.shape == tuple(tensor.shape)
        np.testing.assert_array_equal(array.astype(np.float64), tensor.double().numpy(), err_msg=name)
    assert np.asarray(ours["a.bf16"]).dtype == jnp.bfloat16
