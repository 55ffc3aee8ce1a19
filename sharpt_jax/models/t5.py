"""The T5 encoder-decoder in Flax NNX, numerically matching Hugging Face's `T5ForConditionalGeneration`.

Covers T5 v1.0 (ReLU feed-forward, output layer tied to the token embedding, decoder output rescaled by
d_model**-0.5) and T5 v1.1 / LM-adapted (gated-GELU with the tanh approximation, untied `lm_head`).
Pre-norm blocks with T5's RMS norm, no scaling of attention logits (T5 folds it into the initialisation) and
a learned relative position bias (bidirectional buckets in the encoder, causal in the decoder) that is
computed once per stack and shared by all its layers.

SharPT's soft prompts enter `encode` as `prompt_embeds` [B, L, d]: they are prepended to the token
embeddings before dropout, the encoder mask gets L leading ones and the relative position bias spans all
L + T positions, so the decoder sees L + T encoder states.

Each stack's layers are one `Block` whose parameters carry a leading [num_layers] axis (logical axis
'layers'), e.g. `encoder/blocks/self_attn/q/kernel` [num_layers, d_model, heads * d_kv]. How they run is a
run-time choice that does not change the parameters or the results (to float rounding): `scan_layers` runs them
with `jax.lax.scan` (one layer is traced and compiled, so compiling T5-base takes a fraction of the time) or with a
Python loop over the layer slices (every layer is traced, and XLA may schedule across layers); `remat` makes the
backward pass recompute each layer from its input instead of keeping its activations (`jax.checkpoint`; without
it a scanned layer keeps its matrix products' outputs and recomputes the rest, see `Stack.__call__`).

Incremental decoding is functional: `init_cache` returns a plain pytree (self-attention keys/values of
static length `max_decode_len`, cross-attention keys/values computed once from the encoder output, both stacked
over the decoder's layers) that `decode_step` takes and returns, so it can be carried through
`jax.lax.while_loop`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sharpt_jax.models import layers

# (keys, values) of one attention layer: each [B, T, heads, d_kv].
KeyValues = tuple[jax.Array, jax.Array]

_FEED_FORWARD_PROJ = ("relu", "gated-gelu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 model; names follow Hugging Face's `T5Config`."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # 'relu' (T5 v1.0) or 'gated-gelu' (v1.1, LM-adapted).
    tie_word_embeddings: bool = True  # The output layer is the token embedding table (no `lm_head`).
    # Multiply the decoder output by d_model**-0.5 before the output layer: original T5 does, v1.1 does not.
    # None means "if tied" (Hugging Face's rule); separate from tying because transformers 5 ties freshly
    # initialised v1.1 models without rescaling.
    scale_decoder_outputs: bool | None = None
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        if self.feed_forward_proj not in _FEED_FORWARD_PROJ:
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} not in {_FEED_FORWARD_PROJ}")
        if self.scale_decoder_outputs is None:
            object.__setattr__(self, "scale_decoder_outputs", self.tie_word_embeddings)

    @classmethod
    def from_hf(cls, config: dict) -> "T5Config":
        """The config of a Hugging Face `config.json` dict; ValueError naming what we cannot run."""
        if config.get("model_type") != "t5":
            raise ValueError(f"model_type {config.get('model_type')!r} is not supported (only 't5')")
        feed_forward_proj = config.get("feed_forward_proj", "relu")
        if feed_forward_proj not in _FEED_FORWARD_PROJ:
            raise ValueError(f"feed_forward_proj {feed_forward_proj!r} is not supported (only {_FEED_FORWARD_PROJ})")
        tied = config.get("tie_word_embeddings", True) is not False
        try:
            return cls(
                vocab_size=config["vocab_size"],
                d_model=config["d_model"],
                d_kv=config["d_kv"],
                d_ff=config["d_ff"],
                num_layers=config["num_layers"],
                num_decoder_layers=config.get("num_decoder_layers") or config["num_layers"],
                num_heads=config["num_heads"],
                relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
                relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
                dropout_rate=config.get("dropout_rate", 0.1),
                layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
                feed_forward_proj=feed_forward_proj,
                tie_word_embeddings=tied,
                # Written by transformers 5; older configs mark v1.1 by tie_word_embeddings=False alone.
                scale_decoder_outputs=config.get("scale_decoder_outputs"),
                pad_token_id=config.get("pad_token_id", 0),
                eos_token_id=config.get("eos_token_id", 1),
                decoder_start_token_id=config.get("decoder_start_token_id", 0),
            )
        except KeyError as err:
            raise ValueError(f"config lacks the field {err}") from err


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucketing of key_position - query_position (Mesh TensorFlow's `_relative_position_bucket`).

    Half the buckets (per direction when bidirectional) hold exact small distances, the rest grow
    logarithmically up to `max_distance`; a causal stack maps all future positions to bucket 0.

    Args:
      relative_position: int [...], key position minus query position.

    Returns:
      int32 [...] in [0, num_buckets).
    """
    relative_position = relative_position.astype(jnp.int32)
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(relative_position > 0, num_buckets, 0)
        distance = jnp.abs(relative_position)
    else:
        offset = 0
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # Same float32 operations in the same order as Hugging Face, so bucket edges round identically.
    # maximum(., 1) only keeps log() finite at distance 0, which takes the exact branch anyway.
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
    log_ratio = log_ratio / np.log(max_distance / max_exact) * (num_buckets - max_exact)
    if_large = jnp.minimum(max_exact + log_ratio.astype(jnp.int32), num_buckets - 1)
    return offset + jnp.where(distance < max_exact, distance, if_large)


def _dense(n_in: int, n_out: int, axes, std: float, dtype, param_dtype, rngs) -> layers.Dense:
    """A bias-free projection initialised N(0, std^2) as in Hugging Face's `T5PreTrainedModel`."""
    init = nnx.initializers.normal(std)
    return layers.Dense(n_in, n_out, axes, kernel_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head attention projections: q, k, v [d_model, heads * d_kv] and o [heads * d_kv, d_model]."""

    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.num_heads, self.d_kv, self.dropout_rate = config.num_heads, config.d_kv, config.dropout_rate
        d, inner = config.d_model, config.num_heads * config.d_kv
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # T5 has no 1/sqrt(d_kv) in the attention logits, so the query init carries it.
        self.q = _dense(d, inner, ("embed", "heads"), (d * config.d_kv) ** -0.5, **kw)
        self.k = _dense(d, inner, ("embed", "heads"), d**-0.5, **kw)
        self.v = _dense(d, inner, ("embed", "heads"), d**-0.5, **kw)
        self.o = _dense(inner, d, ("heads", "embed"), inner**-0.5, **kw)

    def _split_heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, self.d_kv)

    def keys_values(self, x: jax.Array) -> KeyValues:
        """x: [B, T, d_model] -> (keys, values), each [B, T, heads, d_kv]."""
        return self._split_heads(self.k(x)), self._split_heads(self.v(x))

    def __call__(self, x, keys_values: KeyValues, bias, mask, rngs=None) -> jax.Array:
        """x: [B, Q, d_model] queries against `keys_values` (see `layers.attention`) -> [B, Q, d_model]."""
        out = layers.attention(self._split_heads(self.q(x)), *keys_values, bias, mask, self.dropout_rate, rngs)
        return self.o(out.reshape(*out.shape[:-2], -1))


class FeedForward(nnx.Module):
    """ReLU (`wi`, `wo`) or gated-GELU (`wi_0`, `wi_1`, `wo`) feed-forward layer."""

    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.gated, self.dropout_rate = config.feed_forward_proj == "gated-gelu", config.dropout_rate
        d, d_ff, kw = config.d_model, config.d_ff, dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if self.gated:
            self.wi_0 = _dense(d, d_ff, ("embed", "mlp"), d**-0.5, **kw)
            self.wi_1 = _dense(d, d_ff, ("embed", "mlp"), d**-0.5, **kw)
        else:
            self.wi = _dense(d, d_ff, ("embed", "mlp"), d**-0.5, **kw)
        self.wo = _dense(d_ff, d, ("mlp", "embed"), d_ff**-0.5, **kw)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        """x: [B, T, d_model] -> [B, T, d_model]."""
        if self.gated:
            # Hugging Face's "gelu_new" is the tanh approximation.
            h = jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x)
        else:
            h = jax.nn.relu(self.wi(x))
        return self.wo(layers.dropout(h, self.dropout_rate, rngs))


class Block(nnx.Module):
    """One pre-norm T5 layer: self-attention, cross-attention (decoder only), feed-forward."""

    def __init__(self, config: T5Config, cross_attention: bool, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dropout_rate = config.dropout_rate
        norm = dict(eps=config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        sub = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_norm = layers.RMSNorm(config.d_model, **norm)
        self.self_attn = Attention(config, **sub)
        self.cross_norm = layers.RMSNorm(config.d_model, **norm) if cross_attention else None
        self.cross_attn = Attention(config, **sub) if cross_attention else None
        self.ffn_norm = layers.RMSNorm(config.d_model, **norm)
        self.ffn = FeedForward(config, **sub)

    def __call__(
        self,
        x: jax.Array,
        bias: jax.Array,
        mask: jax.Array,
        cross: tuple[KeyValues, jax.Array] | None = None,
        cache: KeyValues | None = None,
        step: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, KeyValues]:
        """Runs the layer on x [B, Q, d_model].

        Args:
          bias, mask: self-attention position bias and mask (see `layers.attention`).
          cross: ((keys, values) [B, T_enc, heads, d_kv], mask [B, 1, 1, T_enc]) of the encoder output.
          cache: self-attention (keys, values) [B, max_len, heads, d_kv] of earlier positions; this call's
            Q positions are written at `step` and attention runs over the whole cache.

        Returns:
          x [B, Q, d_model] and the self-attention (keys, values) used: the updated cache if one was given.
        """
        h = self.self_norm(x)
        keys_values = self.self_attn.keys_values(h)
        if cache is not None:
            keys_values = tuple(
                jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), step, axis=1)
                for c, new in zip(cache, keys_values, strict=True)
            )
        x = x + layers.dropout(self.self_attn(h, keys_values, bias, mask, rngs), self.dropout_rate, rngs)
        if self.cross_attn is not None:
            cross_keys_values, cross_mask = cross
            h = self.cross_norm(x)
            x = x + layers.dropout(
                self.cross_attn(h, cross_keys_values, None, cross_mask, rngs), self.dropout_rate, rngs
            )
        x = x + layers.dropout(self.ffn(self.ffn_norm(x), rngs), self.dropout_rate, rngs)
        return x, keys_values


class Stack(nnx.Module):
    """The encoder (bidirectional) or decoder (causal, with cross-attention) stack of blocks.

    `blocks` is one `Block` of stacked parameters, [num_layers, ...] on the logical axis 'layers' (built with
    `nnx.vmap`, each layer initialised from its own key). The relative position bias table belongs to the stack
    (Hugging Face stores it in block 0) and is shared by every block.
    """

    def __init__(self, config: T5Config, decoder: bool, *, dtype, param_dtype, scan_layers, remat, rngs: nnx.Rngs):
        self.config, self.decoder, self.scan_layers, self.remat = config, decoder, scan_layers, remat
        self.num_layers = config.num_decoder_layers if decoder else config.num_layers
        self.relpos = layers.param(
            rngs,
            nnx.initializers.normal(config.d_model**-0.5),
            (config.relative_attention_num_buckets, config.num_heads),
            ("relpos", "heads"),
            param_dtype,
        )

        @nnx.split_rngs(splits=self.num_layers)
        @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked_blocks(rngs):
            return Block(config, decoder, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.blocks = stacked_blocks(rngs)
        self.final_norm = layers.RMSNorm(
            config.d_model, eps=config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def position_bias(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """query_positions [Q], key_positions [K] int -> float32 bias [1, heads, Q, K]."""
        buckets = relative_position_bucket(
            key_positions[None, :] - query_positions[:, None],
            bidirectional=not self.decoder,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance,
        )
        values = jnp.take(self.relpos[...].astype(jnp.float32), buckets, axis=0)  # [Q, K, heads]
        return jnp.transpose(values, (2, 0, 1))[None]

    def cross_keys_values(self, encoded: jax.Array) -> KeyValues:
        """Encoder output [B, T_enc, d] -> every decoder layer's cross-attention (keys, values), each
        [layers, B, T_enc, heads, d_kv]."""
        graphdef, params = nnx.split(self.blocks)
        return jax.vmap(lambda p: nnx.merge(graphdef, p).cross_attn.keys_values(encoded))(params)

    def __call__(self, x, bias, mask, cross=None, caches=None, step=None, rngs=None):
        """Runs the layers on embedded x [B, Q, d].

        Args:
          bias, mask, step: as in `Block`, the same for every layer.
          cross: (`cross_keys_values` of the encoder output, encoder mask [B, 1, 1, T_enc]) in the decoder.
          caches: every layer's self-attention (keys, values), each [layers, B, max_len, heads, d_kv], or None.
          rngs: `nnx.Rngs` with a `dropout` stream to apply dropout (each layer gets its own key), or None.

        Returns:
          normalised outputs [B, Q, d] and, when `caches` is given, the updated caches (else None).
        """
        x = layers.dropout(x, self.config.dropout_rate, rngs)
        graphdef, params = nnx.split(self.blocks)
        cross_keys_values, cross_mask = (None, None) if cross is None else cross
        keys = None if rngs is None else jax.random.split(rngs.dropout(), self.num_layers)

        def layer(x, inputs):
            """x [B, Q, d] and one layer's slices of (params, cross keys_values, cache, dropout key)."""
            params, layer_cross, cache, key = inputs
            x, keys_values = nnx.merge(graphdef, params)(
                x,
                bias,
                mask,
                None if layer_cross is None else (layer_cross, cross_mask),
                cache,
                step,
                None if key is None else nnx.Rngs(dropout=key),
            )
            # Only a decoding step needs the keys and values; a training pass would stack them for nothing.
            return x, None if cache is None else keys_values

        if self.remat or self.scan_layers:
            # What the backward pass keeps of a layer. With remat only its input x: everything else is recomputed.
            # Scanned without remat, the outputs of its matrix products: the elementwise work between them (norms,
            # softmax, GELU, dropout masks) is recomputed. In a scan JAX's autodiff, not XLA, picks what to keep, and
            # by default it stacks every intermediate of every layer (T5-base at B = 8, T = 128: 2.5 GiB of
            # temporaries and a step 12% slower than unrolled on CPU; with the policy 1.2 GiB and as fast).
            policy = jax.checkpoint_policies.nothing_saveable if self.remat else jax.checkpoint_policies.checkpoint_dots
            # XLA cannot merge a scan body's recomputation with the forward pass, so the barriers against that
            # (prevent_cse) are only needed unrolled; in a scan they cost a tiny model a quarter of its compile time.
            layer = jax.checkpoint(layer, policy=policy, prevent_cse=not self.scan_layers)
        inputs = (params, cross_keys_values, caches, keys)
        if self.scan_layers:
            x, new_caches = jax.lax.scan(layer, x, inputs)
        else:
            outputs = []
            for i in range(self.num_layers):
                x, out = layer(x, jax.tree.map(lambda a, i=i: a[i], inputs))
                outputs.append(out)
            new_caches = jax.tree.map(lambda *a: jnp.stack(a), *outputs)
        x = layers.dropout(self.final_norm(x), self.config.dropout_rate, rngs)
        return x, new_caches


class T5(nnx.Module):
    """T5 encoder-decoder with optional soft prompts; see the module docstring.

    Attributes:
      config: the `T5Config`.
      dtype: compute dtype (activations, matrix products); softmax, norms and logits are float32.
      scan_layers, remat: how the stacks run their layers (see the module docstring); neither changes the
        parameters, so a model built either way loads the same checkpoints.
    """

    def __init__(
        self,
        config: T5Config,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scan_layers: bool = True,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config, self.dtype = config, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.shared = layers.Embed(config.vocab_size, config.d_model, **kw)
        self.encoder = Stack(config, decoder=False, scan_layers=scan_layers, remat=remat, **kw)
        self.decoder = Stack(config, decoder=True, scan_layers=scan_layers, remat=remat, **kw)
        # The output layer computes in float32 whatever the backbone's dtype (as T5X does): bfloat16 logits
        # would put the LM loss and the rank-classification scores on a grid of 1/128 relative steps.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else _dense(
                config.d_model,
                config.vocab_size,
                ("embed", "vocab"),
                1.0,
                dtype=jnp.float32,
                param_dtype=param_dtype,
                rngs=rngs,
            )
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """input_ids [B, T] -> token embeddings [B, T, d_model] in the compute dtype."""
        return self.shared(input_ids)

    def encode(self, input_ids, attention_mask=None, prompt_embeds=None, rngs=None):
        """Runs the encoder over [prompt_embeds; embed(input_ids)].

        Args:
          input_ids: int [B, T].
          attention_mask: [B, T], 1 for real tokens, 0 for padding; None means all ones.
          prompt_embeds: [B, L, d_model] soft prompt or None (L = 0).
          rngs: `nnx.Rngs` with a `dropout` stream to train with dropout; None = deterministic.

        Returns:
          encoded [B, L + T, d_model] and encoder_mask [B, L + T] (int32).
        """
        x = self.embed(input_ids)
        mask = jnp.ones(input_ids.shape) if attention_mask is None else attention_mask
        mask = mask.astype(jnp.int32)
        if prompt_embeds is not None:
            x = jnp.concatenate([prompt_embeds.astype(x.dtype), x], axis=1)
            mask = jnp.concatenate([jnp.ones(prompt_embeds.shape[:2], jnp.int32), mask], axis=1)
        positions = jnp.arange(x.shape[1])
        bias = self.encoder.position_bias(positions, positions)
        encoded, _ = self.encoder(x, bias, _key_mask(mask), rngs=rngs)
        return encoded, mask

    def decode(self, decoder_input_ids, encoded, encoder_mask, decoder_attention_mask=None, rngs=None):
        """Teacher-forced decoder pass.

        Args:
          decoder_input_ids: int [B, S] (targets shifted right, starting with decoder_start_token_id).
          encoded, encoder_mask: the outputs of `encode`: [B, T_enc, d_model], [B, T_enc].
          decoder_attention_mask: [B, S] or None (causal masking only).

        Returns:
          logits [B, S, vocab] float32.
        """
        positions = jnp.arange(decoder_input_ids.shape[1])
        bias = self.decoder.position_bias(positions, positions)
        mask = (positions[None, :] <= positions[:, None])[None, None]  # [1, 1, S, S] causal.
        if decoder_attention_mask is not None:
            mask = mask & _key_mask(decoder_attention_mask)
        cross = (self.decoder.cross_keys_values(encoded), _key_mask(encoder_mask))
        x, _ = self.decoder(self.embed(decoder_input_ids), bias, mask, cross, rngs=rngs)
        return self._logits(x)

    def __call__(
        self,
        input_ids,
        decoder_input_ids,
        attention_mask=None,
        decoder_attention_mask=None,
        prompt_embeds=None,
        rngs=None,
    ):
        """input_ids [B, T], decoder_input_ids [B, S] -> logits [B, S, vocab] float32; see encode/decode."""
        encoded, encoder_mask = self.encode(input_ids, attention_mask, prompt_embeds, rngs)
        return self.decode(decoder_input_ids, encoded, encoder_mask, decoder_attention_mask, rngs)

    def init_cache(self, encoded: jax.Array, encoder_mask: jax.Array, max_decode_len: int) -> dict:
        """The decoding cache for `decode_step`: a pytree of static shapes.

        Args:
          encoded, encoder_mask: the outputs of `encode`: [B, T_enc, d_model], [B, T_enc].
          max_decode_len: static number of decoder positions.

        Returns:
          {'self': (keys, values) zeros [layers, B, max_decode_len, heads, d_kv],
           'cross': (keys, values) [layers, B, T_enc, heads, d_kv],
           'encoder_mask': [B, T_enc]}, stacked over the decoder's layers.
        """
        shape = (self.decoder.num_layers, encoded.shape[0], max_decode_len, self.config.num_heads, self.config.d_kv)
        zeros = jnp.zeros(shape, self.dtype)
        return {
            "self": (zeros, zeros),
            "cross": self.decoder.cross_keys_values(encoded),
            "encoder_mask": encoder_mask,
        }

    def decode_step(self, token_ids: jax.Array, cache: dict, step: jax.Array) -> tuple[jax.Array, dict]:
        """One decoder position for every row.

        Args:
          token_ids: int [B], the decoder input at position `step`.
          cache: from `init_cache` or the previous `decode_step`; holds positions < step.
          step: int scalar (may be traced), the position being decoded, < max_decode_len.

        Returns:
          logits [B, vocab] float32 for position `step`, and the cache with this position written.
        """
        max_len = cache["self"][0].shape[2]
        key_positions = jnp.arange(max_len)
        bias = self.decoder.position_bias(jnp.reshape(step, (1,)), key_positions)  # [1, heads, 1, max_len]
        mask = (key_positions <= step)[None, None, None, :]
        cross = (cache["cross"], _key_mask(cache["encoder_mask"]))
        x, self_caches = self.decoder(self.embed(token_ids[:, None]), bias, mask, cross, cache["self"], step)
        return self._logits(x)[:, 0], {**cache, "self": self_caches}

    def _logits(self, x: jax.Array) -> jax.Array:
        """Decoder outputs [B, S, d_model] -> float32 logits [B, S, vocab], computed in float32."""
        x = x.astype(jnp.float32)
        if self.config.scale_decoder_outputs:
            x = x * self.config.d_model**-0.5
        return self.shared.attend(x) if self.lm_head is None else self.lm_head(x)


def _key_mask(mask: jax.Array) -> jax.Array:
    """[B, K] 1/0 -> bool [B, 1, 1, K], broadcast over heads and queries."""
    return mask.astype(bool)[:, None, None, :]
