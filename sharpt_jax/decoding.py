"""Greedy decoding with T5's key/value cache inside one `jax.lax.while_loop`.

The encoder runs once; each loop iteration runs one decoder position for the whole batch through
`T5.decode_step`, and the loop ends as soon as every row has emitted EOS (or after `max_decode_len`
positions). Shapes are static, so the whole function compiles once per (batch, input length,
max_decode_len). To jit it, either pass the module through `nnx.jit`:

    decode = nnx.jit(greedy_decode, static_argnames="max_decode_len")
    tokens = decode(model, input_ids, attention_mask, prompt_embeds, max_decode_len=32)

or, when the model state lives apart from its graph (as in the trainer), merge inside a `jax.jit`:

    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnames="max_decode_len")
    def decode(state, input_ids, attention_mask, prompt_embeds, max_decode_len):
        return greedy_decode(nnx.merge(graphdef, state), input_ids, attention_mask, prompt_embeds,
                             max_decode_len=max_decode_len)
"""

import jax
import jax.numpy as jnp

from sharpt_jax.models.t5 import T5


def greedy_decode(
    model: T5,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    prompt_embeds: jax.Array | None = None,
    max_decode_len: int = 64,
) -> jax.Array:
    """Greedy (argmax) decoding, token for token what Hugging Face's `generate(num_beams=1)` returns.

    Args:
      model: the T5 (no dropout is applied).
      input_ids: int [B, T] encoder input.
      attention_mask: [B, T], 1 for real tokens; None means all ones.
      prompt_embeds: [B, L, d_model] soft prompt prepended to the encoder input, or None.
      max_decode_len: static number of positions to decode.

    Returns:
      int32 [B, max_decode_len]: the generated tokens without the decoder start token, each row ending at
      its first EOS (included) and padded with `pad_token_id` (0 for T5) after it.
    """
    config = model.config
    encoded, encoder_mask = model.encode(input_ids, attention_mask, prompt_embeds)
    batch_size = input_ids.shape[0]
    state = {
        "step": jnp.zeros((), jnp.int32),
        "token": jnp.full((batch_size,), config.decoder_start_token_id, jnp.int32),
        "cache": model.init_cache(encoded, encoder_mask, max_decode_len),
        "tokens": jnp.full((batch_size, max_decode_len), config.pad_token_id, jnp.int32),
        "done": jnp.zeros((batch_size,), bool),
    }

    def not_finished(state):
        return (state["step"] < max_decode_len) & ~jnp.all(state["done"])

    def decode_one(state):
        logits, cache = model.decode_step(state["token"], state["cache"], state["step"])
        token = jnp.where(state["done"], config.pad_token_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        tokens = jax.lax.dynamic_update_slice_in_dim(state["tokens"], token[:, None], state["step"], axis=1)
        return {
            "step": state["step"] + 1,
            "token": token,
            "cache": cache,
            "tokens": tokens,
            "done": state["done"] | (token == config.eos_token_id),
        }

    return jax.lax.while_loop(not_finished, decode_one, state)["tokens"]
