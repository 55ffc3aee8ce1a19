"""The key/value cache and `greedy_decode` against the full decoder pass and Hugging Face's `generate`, with the
layers scanned (the default) and unrolled ('v1.1-unroll')."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from test_t5 import D_MODEL, PROMPT_LEN, max_rel_err, padded_batch, save_hf_t5, saved_and_loaded

from sharpt_jax import hf
from sharpt_jax.decoding import greedy_decode

MAX_LEN = 10


# The cache and the loop do not depend on how the output layer is tied; VARIANTS' third one is left out.
@pytest.fixture(scope="module", params=["v1.0", "v1.1", "v1.1-unroll"])
def pair(request, tmp_path_factory):
    """(HF model, our model loaded from its folder, layers scanned except in 'v1.1-unroll')."""
    _, ref, _, model = saved_and_loaded(request.param, tmp_path_factory)
    return ref, model


def hf_generate(ref, mask, input_ids=None, inputs_embeds=None) -> np.ndarray:
    """HF greedy tokens [B, <= MAX_LEN] without the decoder start token (rows padded with 0 after EOS)."""
    with torch.no_grad():
        out = ref.generate(
            input_ids=None if input_ids is None else torch.tensor(input_ids),
            inputs_embeds=inputs_embeds,
            attention_mask=torch.tensor(mask),
            max_new_tokens=MAX_LEN,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=0,
            # HF's cache sizes itself by num_layers and breaks when num_decoder_layers differs (as here);
            # without it every step reruns the full decoder, an independent check of our cache anyway.
            use_cache=False,
        )
    return out[:, 1:].numpy()


def assert_same_tokens(ours, expected):
    """`expected` may stop early (every row done); ours then holds only padding after it."""
    ours = np.asarray(ours)
    assert ours.shape == (expected.shape[0], MAX_LEN) and ours.dtype == np.int32
    np.testing.assert_array_equal(ours[:, : expected.shape[1]], expected)
    np.testing.assert_array_equal(ours[:, expected.shape[1] :], 0)


def test_cached_steps_equal_full_decode(pair):
    _, model = pair
    input_ids, mask, decoder_ids, _ = padded_batch()
    prompt = jnp.asarray(np.random.default_rng(0).normal(size=(3, PROMPT_LEN, D_MODEL)), jnp.float32)
    encoded, encoder_mask = model.encode(jnp.asarray(input_ids), jnp.asarray(mask), prompt)
    full = np.asarray(model.decode(jnp.asarray(decoder_ids), encoded, encoder_mask))
    # A cache longer than the sequence: its unwritten positions must stay invisible.
    cache = model.init_cache(encoded, encoder_mask, max_decode_len=decoder_ids.shape[1] + 3)
    step_fn = nnx.jit(lambda model, token, cache, step: model.decode_step(token, cache, step))
    for step in range(decoder_ids.shape[1]):
        logits, cache = step_fn(model, jnp.asarray(decoder_ids[:, step]), cache, jnp.asarray(step))
        assert logits.shape == (3, model.config.vocab_size) and logits.dtype == jnp.float32
        assert max_rel_err(logits, full[:, step]) < 1e-5, step


def test_greedy_matches_hf_generate(pair):
    ref, model = pair
    input_ids, mask, _, _ = padded_batch()
    decode = nnx.jit(greedy_decode, static_argnames="max_decode_len")
    tokens = decode(model, jnp.asarray(input_ids), jnp.asarray(mask), max_decode_len=MAX_LEN)
    assert_same_tokens(tokens, hf_generate(ref, mask, input_ids=input_ids))


@pytest.mark.parametrize("pair", ["v1.1"], indirect=True)
def test_greedy_with_prompt_matches_hf_inputs_embeds_split_state(pair):
    ref, model = pair
    input_ids, mask, _, _ = padded_batch(seed=4)
    prompt = np.random.default_rng(5).normal(size=(3, PROMPT_LEN, D_MODEL)).astype(np.float32)
    full_mask = np.concatenate([np.ones((3, PROMPT_LEN), np.int64), mask], axis=1)
    with torch.no_grad():
        embeds = torch.cat([torch.tensor(prompt), ref.shared(torch.tensor(input_ids))], dim=1)
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnames="max_decode_len")
    def decode(state, input_ids, mask, prompt, max_decode_len):
        model = nnx.merge(graphdef, state)
        return greedy_decode(model, input_ids, mask, prompt, max_decode_len=max_decode_len)

    tokens = decode(state, *map(jnp.asarray, (input_ids, mask, prompt)), max_decode_len=MAX_LEN)
    assert_same_tokens(tokens, hf_generate(ref, full_mask, inputs_embeds=embeds))


def test_greedy_stops_at_eos_and_pads(tmp_path):
    # v1.1: a random tied model mostly echoes its previous token, too monotonous for this test.
    ref = save_hf_t5(tmp_path / "plain", "v1.1", seed=2)
    input_ids = np.random.default_rng(6).integers(2, ref.config.vocab_size, (8, 9))
    plain = hf_generate(ref, np.ones_like(input_ids), input_ids=input_ids)
    # Make EOS win exactly where a generated token t would have been the argmax (its logit becomes 1.001 x
    # t's), so the rows containing t end where t first appears; t is the token first seen at the most steps.
    first_seen = {t: {i: list(r).index(t) for i, r in enumerate(plain) if t in r} for t in np.unique(plain)}
    t = max(first_seen, key=lambda t: (len(set(first_seen[t].values())), len(first_seen[t])))
    keep = sorted(first_seen[t])
    with torch.no_grad():
        ref.lm_head.weight[1] = ref.lm_head.weight[t] * 1.001
    ref.save_pretrained(tmp_path / "eos")
    input_ids = input_ids[keep]
    expected = hf_generate(ref, np.ones_like(input_ids), input_ids=input_ids)
    # The premise: every row ends, at two or more distinct steps, before MAX_LEN.
    first_eos = [list(r).index(1) for r in expected if 1 in r]
    assert len(first_eos) == len(keep) >= 2 and len(set(first_eos)) >= 2 and expected.shape[1] < MAX_LEN
    model = hf.load_t5(tmp_path / "eos")
    steps, decode_step = [], model.decode_step

    def counted_decode_step(token, cache, step):
        jax.debug.callback(steps.append, step)
        return decode_step(token, cache, step)

    model.decode_step = counted_decode_step
    assert_same_tokens(greedy_decode(model, jnp.asarray(input_ids), max_decode_len=MAX_LEN), expected)
    assert len(steps) == max(first_eos) + 1  # The loop stopped at the last row's EOS.
