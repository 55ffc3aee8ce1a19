"""The frozen instance encoder: a BERT-family model in Flax NNX that embeds an instance's input text.

SharPT queries its skill codebook with `e0 = encoder(input_ids, attention_mask)` [B, m] (SimCSE BERT-base in
the paper, m = 768). The numerics match Hugging Face's PyTorch `BertModel` (and `RobertaModel`, whose only
difference here is how position ids are counted): post-norm layers, attention logits scaled by
1/sqrt(head_dim), padding keys masked out. The encoder is never trained, so it has no dropout.

Pooling of the last hidden states h [B, T, m]:
  'cls'     h[:, 0] (the [CLS] / <s> token),
  'pooler'  tanh(dense(h[:, 0])), Hugging Face's `BertPooler` (needs the checkpoint's pooler weights),
  'mean'    the mean of h over the positions where attention_mask is 1.
  'mean_normalized'  that mean divided by its L2 norm (sentence-transformers' MiniLM pipeline ends with such a
            Normalize module), so every e0 lies on the unit sphere.

Weights come from a Hugging Face folder through `sharpt_jax.hf.load_encoder`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sharpt_jax.models import layers

POOLINGS = ("cls", "pooler", "mean", "mean_normalized")
MODEL_TYPES = ("bert", "roberta")
# Hugging Face's names: 'gelu' is the exact (erf) GELU, 'gelu_new' and 'gelu_pytorch_tanh' the tanh one.
ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT-family encoder; names follow Hugging Face's `BertConfig`."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    # Kept so that a config round-trips; the frozen encoder runs without dropout.
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    # 'roberta': position ids count only non-padding tokens and start at pad_token_id + 1.
    model_type: str = "bert"

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {tuple(ACTIVATIONS)}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{self.num_attention_heads} heads do not divide hidden_size {self.hidden_size}")

    @classmethod
    def from_hf(cls, config: dict) -> "BertConfig":
        """The config of a Hugging Face `config.json` dict; ValueError naming what we cannot run."""
        model_type = config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported (expected one of {MODEL_TYPES})")
        # Dropped by transformers 5; older configs may still ask for relative position embeddings.
        position_embedding_type = config.get("position_embedding_type", "absolute")
        if position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type {position_embedding_type!r} is not supported (expected 'absolute')"
            )
        hidden_act = config.get("hidden_act", "gelu")
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {hidden_act!r} is not supported (expected one of {tuple(ACTIVATIONS)})")
        try:
            return cls(
                vocab_size=config["vocab_size"],
                hidden_size=config["hidden_size"],
                num_hidden_layers=config["num_hidden_layers"],
                num_attention_heads=config["num_attention_heads"],
                intermediate_size=config["intermediate_size"],
                hidden_act=hidden_act,
                max_position_embeddings=config.get("max_position_embeddings", 512),
                type_vocab_size=config.get("type_vocab_size", 2),
                layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                hidden_dropout_prob=config.get("hidden_dropout_prob", 0.1),
                attention_probs_dropout_prob=config.get("attention_probs_dropout_prob", 0.1),
                pad_token_id=config.get("pad_token_id", 0),
                model_type=model_type,
            )
        except KeyError as err:
            raise ValueError(f"config lacks the field {err}") from err


class Embeddings(nnx.Module):
    """Word + position + token type embeddings, then layer norm."""

    def __init__(self, config: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.config = config
        embed = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.word = layers.Embed(config.vocab_size, config.hidden_size, **embed)
        # Position and token type tables are small and not indexed by vocabulary: their rows stay replicated.
        d, axes = config.hidden_size, (None, "embed")
        self.position = layers.Embed(config.max_position_embeddings, d, axes=axes, **embed)
        self.token_type = layers.Embed(config.type_vocab_size, d, axes=axes, **embed)
        self.norm = layers.LayerNorm(
            config.hidden_size, eps=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        """input_ids, token_type_ids: int [B, T] -> [B, T, hidden_size]."""
        if self.config.model_type == "roberta":
            # RoBERTa numbers real tokens pad+1, pad+2, ... and gives every padding token position pad.
            real = (input_ids != self.config.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(real, axis=1) * real + self.config.pad_token_id
        else:
            positions = jnp.arange(input_ids.shape[1])[None]
        return self.norm(self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids))


class Layer(nnx.Module):
    """One post-norm BERT layer: self-attention, add & norm, feed-forward, add & norm."""

    def __init__(self, config: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.activation = ACTIVATIONS[config.hidden_act]
        d, d_ff = config.hidden_size, config.intermediate_size
        dense = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(eps=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = layers.Dense(d, d, ("embed", "heads"), **dense)
        self.key = layers.Dense(d, d, ("embed", "heads"), **dense)
        self.value = layers.Dense(d, d, ("embed", "heads"), **dense)
        self.attention_output = layers.Dense(d, d, ("heads", "embed"), **dense)
        self.attention_norm = layers.LayerNorm(d, **norm)
        self.intermediate = layers.Dense(d, d_ff, ("embed", "mlp"), **dense)
        self.output = layers.Dense(d_ff, d, ("mlp", "embed"), **dense)
        self.output_norm = layers.LayerNorm(d, **norm)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x: [B, T, hidden_size]; mask: bool [B, 1, 1, T], False at padding keys -> [B, T, hidden_size]."""

        def split(y):
            return y.reshape(*y.shape[:-1], self.num_heads, self.head_dim)

        # `layers.attention` does not scale the logits (T5 needs none); scaling the queries instead is the same product.
        q = split(self.query(x)) * jnp.asarray(self.head_dim**-0.5, x.dtype)
        h = layers.attention(q, split(self.key(x)), split(self.value(x)), None, mask, 0.0, None)
        x = self.attention_norm(x + self.attention_output(h.reshape(x.shape)))
        return self.output_norm(x + self.output(self.activation(self.intermediate(x))))


class InstanceEncoder(nnx.Module):
    """BERT-family encoder with pooling: (input_ids, attention_mask) -> e0 [B, features].

    Attributes:
      config: the `BertConfig`.
      pooling: 'cls', 'pooler', 'mean' or 'mean_normalized' (see the module docstring).
      features: the embedding size m (= hidden_size).
    """

    def __init__(
        self,
        config: BertConfig,
        pooling: str,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.config, self.pooling, self.features = config, pooling, config.hidden_size
        sub = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embeddings = Embeddings(config, **sub)
        self.layers = nnx.List([Layer(config, **sub) for _ in range(config.num_hidden_layers)])
        # A mesh axis may appear only once per PartitionSpec, so only the input side is named.
        self.pooler = (
            layers.Dense(config.hidden_size, config.hidden_size, ("embed", None), use_bias=True, **sub)
            if pooling == "pooler"
            else None
        )

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None
    ) -> jax.Array:
        """Embeds each row.

        Args:
          input_ids: int [B, T], starting with [CLS] (<s> for RoBERTa).
          attention_mask: [B, T], 1 for real tokens, 0 for padding.
          token_type_ids: int [B, T] or None (all segment 0).

        Returns:
          float32 [B, features].
        """
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        key_mask = attention_mask.astype(bool)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        if self.pooling.startswith("mean"):
            weights = attention_mask.astype(jnp.float32)[..., None]
            total = jnp.sum(x.astype(jnp.float32) * weights, axis=1)
            mean = total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
            if self.pooling == "mean_normalized":  # torch.nn.functional.normalize's eps.
                return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
            return mean
        first = x[:, 0]
        if self.pooling == "pooler":
            first = jnp.tanh(self.pooler(first))
        return first.astype(jnp.float32)
