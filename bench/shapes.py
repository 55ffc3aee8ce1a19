"""Model shapes and benchmark points shared by `bench/run.py`, `bench/param_counts.py` and `bench/flops.py`.

Every benchmark builds its models here, directly from `T5Config` / `BertConfig` with random weights (no
checkpoint is read), so that the step-time, FLOP and parameter-count tables describe exactly the same modules.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from sharpt_jax.models.encoder import BertConfig, InstanceEncoder
from sharpt_jax.models.sharpt import SharPT
from sharpt_jax.models.t5 import T5, T5Config


def t5_v1_1(d_model: int, d_ff: int, num_heads: int, num_layers: int, vocab_size: int = 32128) -> T5Config:
    """A T5 v1.1 / LM-adapted shape: gated-GELU, untied lm_head, d_kv 64 (or smaller for toy widths)."""
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=min(64, d_model // num_heads),
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )


def hf_t5_config(c: T5Config, **fields):
    """The Hugging Face `transformers.T5Config` of our `c` (plus `fields`), for PyTorch models of the same shape."""
    import transformers  # Only the benchmarks that build a PyTorch T5 need it.

    return transformers.T5Config(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        d_kv=c.d_kv,
        d_ff=c.d_ff,
        num_layers=c.num_layers,
        num_decoder_layers=c.num_decoder_layers,
        num_heads=c.num_heads,
        feed_forward_proj=c.feed_forward_proj,
        tie_word_embeddings=c.tie_word_embeddings,
        **fields,
    )


def bert(hidden_size: int, num_layers: int, num_heads: int, vocab_size: int = 30522) -> BertConfig:
    """A BERT encoder shape with the usual 4x feed-forward width."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
    )


T5_SHAPES = {
    "quick": t5_v1_1(256, 1024, 4, 2),  # 2 + 2 layers: compiling dominates a quick CPU run.
    "small": t5_v1_1(512, 1024, 6, 8),
    "base": t5_v1_1(768, 2048, 12, 12),
    "large": t5_v1_1(1024, 2816, 16, 24),
    "xl": t5_v1_1(2048, 5120, 32, 24),
    "xxl": t5_v1_1(4096, 10240, 64, 24),
}
BERT_SHAPES = {"quick": bert(128, 2, 2), "base": bert(768, 12, 12)}


@dataclasses.dataclass(frozen=True)
class Point:
    """One benchmark point: what is trained and the batch shape.

    Attributes:
      method, stage: names and stages of `sharpt_jax.models.methods`.
      batch: B; input_len: T encoder tokens; target_len: S decoder tokens; prompt_len: L soft tokens;
      num_skills: K codebook vectors; instance_len: I instance-encoder tokens.
      cached_embeddings: the batch carries each instance's e0 (`config.instance_embedding_cache`), so the step
        never runs the instance encoder.
      scan_layers: T5 runs its layers under `jax.lax.scan` (else unrolled; `sharpt_jax.models.t5`).
    """

    method: str
    stage: str
    batch: int
    input_len: int
    target_len: int
    prompt_len: int
    num_skills: int
    instance_len: int
    cached_embeddings: bool = False
    scan_layers: bool = True

    @property
    def uses_encoder(self) -> bool:
        return self.method in ("sharpt", "no_latent")

    @property
    def encoder_len(self) -> int:
        """Encoder positions the T5 sees: the prompt plus the input (model tuning has no prompt)."""
        return self.input_len + (0 if self.method == "model_tuning" else self.prompt_len)


def build(
    t5_config: T5Config,
    bert_config: BertConfig,
    point: Point,
    dtype=jnp.float32,
    seed: int = 0,
    param_dtype=jnp.float32,
) -> SharPT:
    """The SharPT module of `point.method` with random weights; `dtype` is the backbone's compute dtype and
    `param_dtype` the frozen T5's and encoder's storage dtype (the prompt, generator and codebook are float32)."""
    rngs = nnx.Rngs(seed)
    t5 = T5(t5_config, dtype=dtype, param_dtype=param_dtype, scan_layers=point.scan_layers, rngs=rngs)
    encoder = (
        InstanceEncoder(bert_config, "cls", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if point.uses_encoder
        else None
    )
    return SharPT(
        t5,
        encoder,
        method=point.method,
        prompt_length=point.prompt_len,
        num_skills=point.num_skills,
        beta=0.1,
        rngs=rngs,
    )


def build_abstract(t5_config: T5Config, bert_config: BertConfig, point: Point) -> SharPT:
    """`build` under `nnx.eval_shape`: parameters are ShapeDtypeStructs, no memory is allocated."""
    return nnx.eval_shape(lambda: build(t5_config, bert_config, point))
