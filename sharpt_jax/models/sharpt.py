"""SharPT: skill codebook, prompt generator, and the model that wires them to a frozen T5.

Forward pass (Pang et al., Eq. 1-5), for a batch of B instances:
  e0 = encoder(instance tokens)                      [B, m]   frozen instance encoder
  k  = argmin_i ||e0 - E_i||_2,  e1 = E_k            [B], [B, m]   skill codebook E: [K, m]
  e' = tanh(W1 e1 + b1)                              [B, d]
  p_l = W2 (z_l + e') + b2                           [B, L, d]     prompt generator
  logits = T5(prompt ++ embed(inputs), targets)      frozen backbone
  loss = LM loss + beta * mean_b ||sg(e0) - E_k||_2  (Eq. 5, source stage; in the target stage E is frozen and
                                                      the loss is the LM loss alone, Eq. 3: sharpt_jax.optim)

One `SharPT` module serves every method of the paper's tables, chosen by `method`:
  sharpt         the full method above
  no_source      ablation "no source task training": the same model, its codebook and generator learned on the
                 target alone (Eq. 5)
  no_latent      ablation "no latent space": the generator reads e0 directly (no codebook)
  prompt_tuning  baseline: one learned prompt [L, d] shared by all instances (Lester et al.)
  model_tuning   baseline: no prompt, the T5 itself is trained
Which parameters train, transfer and export is not decided here: `sharpt_jax.models.methods` holds those rules.
`SharPT.oracle` (None unless set: `OracleRouting`) is a diagnostic that replaces the nearest-vector choice.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sharpt_jax.models import layers, methods
from sharpt_jax.models.encoder import InstanceEncoder
from sharpt_jax.models.t5 import T5


class Codebook(nnx.Module):
    """The shared skill latent space: K skill vectors of the instance encoder's width m."""

    def __init__(self, num_skills: int, features: int, *, rngs: nnx.Rngs):
        # Unit-variance entries scaled by 1/sqrt(m) give skill vectors of norm ~1, so the first nearest-neighbour
        # assignments follow the direction of e0 (its dot product with E) rather than all picking one vector.
        init = nnx.initializers.normal(features**-0.5)
        self.embeddings = layers.param(rngs, init, (num_skills, features), ("codebook", "prompt"))

    def __call__(self, e0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Nearest skill vector of each instance embedding.

        Args:
          e0: [batch, m] instance embeddings.
        Returns:
          e1: [batch, m] the chosen skill vectors E_k (differentiable with respect to E).
          k: [batch] int32 indices; ties go to the lowest index (argmin's first occurrence).
        """
        table = self.embeddings[...].astype(jnp.float32)
        e0 = e0.astype(jnp.float32)
        # ||e0||^2 - 2 e0.E^T + ||E||^2: one [B, K] matmul instead of a [B, K, m] difference tensor.
        distances = (
            jnp.sum(e0 * e0, axis=-1, keepdims=True)
            - 2.0 * jnp.dot(e0, table.T, precision=jax.lax.Precision.HIGHEST)
            + jnp.sum(table * table, axis=-1)[None, :]
        )
        k = jnp.argmin(distances, axis=-1).astype(jnp.int32)
        return jnp.take(table, k, axis=0), k


class OracleRouting(nnx.Module):
    """Diagnostic routing: each instance uses a given skill vector instead of its nearest one.

    Holds the instance embeddings of every instance a run can see, keys [N, m], and the skill index each must
    use, skills [N] (e.g. the vector its true skill's source instances choose most). An instance takes the skill
    of its nearest key, which is its own embedding up to float rounding (cached or recomputed e0 alike). Both
    are plain `nnx.Variable`s, not parameters: nothing trains, transfers or is saved.
    """

    def __init__(self, keys, skills):
        self.keys = nnx.Variable(jnp.asarray(keys, jnp.float32))
        self.skills = nnx.Variable(jnp.asarray(skills, jnp.int32))

    def __call__(self, e0: jax.Array) -> jax.Array:
        """e0: [batch, m] -> [batch] int32 skill indices."""
        keys, e0 = self.keys[...], e0.astype(jnp.float32)
        distances = (
            jnp.sum(e0 * e0, axis=-1, keepdims=True)
            - 2.0 * jnp.dot(e0, keys.T, precision=jax.lax.Precision.HIGHEST)
            + jnp.sum(keys * keys, axis=-1)[None, :]
        )
        return jnp.take(self.skills[...], jnp.argmin(distances, axis=-1))


class PromptGenerator(nnx.Module):
    """Eq. 1: p_l = W2 (z_l + tanh(W1 e + b1)) + b2, L prompt tokens of the backbone's width d."""

    def __init__(self, in_features: int, d_model: int, prompt_length: int, *, rngs: nnx.Rngs):
        axes = ("prompt", "prompt")
        self.w1 = layers.Dense(in_features, d_model, axes, use_bias=True, rngs=rngs)
        self.w2 = layers.Dense(d_model, d_model, axes, use_bias=True, rngs=rngs)
        # "randomly initialized in training" (the paper); unit variance like a T5 token embedding at init.
        self.positions = layers.param(rngs, nnx.initializers.normal(1.0), (prompt_length, d_model), axes)

    def __call__(self, skill: jax.Array) -> jax.Array:
        """skill: [batch, m] -> prompt: [batch, L, d] in float32."""
        hidden = jnp.tanh(self.w1(skill.astype(jnp.float32)))  # [B, d]
        # W2 is linear, so W2 (z_l + e') = W2 z_l + W2 e': two small matmuls ([L, d] and [B, d]) and a broadcast
        # add instead of one [B * L, d] x [d, d] product.
        per_position = jnp.dot(self.positions[...], self.w2.kernel[...])  # [L, d]
        return self.w2(hidden)[:, None, :] + per_position[None, :, :]


class SharPT(nnx.Module):
    """A frozen T5 conditioned on instance-level (or task-level) soft prompts; see the module docstring.

    Batches are dicts of int32 arrays as `tasks.features.SharPTFeatureConverter` produces them:
      encoder_input_tokens [B, T], encoder_input_mask [B, T], decoder_input_tokens [B, S],
      decoder_target_tokens [B, S], decoder_loss_weights [B, S], instance_input_tokens [B, I],
      instance_input_mask [B, I] (the last two only for methods with an instance encoder, which read
      instance_embedding [B, m] float32, the encoder's output, instead when a batch has it).
    """

    def __init__(
        self,
        t5: T5,
        instance_encoder: InstanceEncoder | None,
        *,
        method: str,
        prompt_length: int,
        num_skills: int,
        beta: float,
        rngs: nnx.Rngs,
        prompt_init_exclude: tuple[int, ...] = (),
    ):
        """`prompt_init_exclude`: token ids whose embedding rows the task prompt's start never draws."""
        spec = methods.get(method)
        if spec.uses_encoder and instance_encoder is None:
            raise ValueError(f"method {method!r} needs an instance encoder")
        self.method, self.beta = method, beta
        self.t5 = t5
        self.instance_encoder = instance_encoder if spec.uses_encoder else None
        d_model = t5.config.d_model
        self.codebook = Codebook(num_skills, instance_encoder.features, rngs=rngs) if spec.has_codebook else None
        self.generator = (
            PromptGenerator(instance_encoder.features, d_model, prompt_length, rngs=rngs) if spec.uses_encoder else None
        )
        self.prompt = (
            layers.param(
                rngs, _sampled_vocab_init(t5, prompt_init_exclude), (prompt_length, d_model), ("prompt", "prompt")
            )
            if spec.prompt == "task"
            else None
        )
        self.oracle: OracleRouting | None = nnx.data(None)  # Set only by the oracle-routing diagnostic.

    def prompts(self, batch: dict[str, jax.Array]) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        """The soft prompt of every instance and what the latent space did.

        Returns:
          prompt: [B, L, d] (None for model tuning).
          aux: with a codebook: `skill` [B] int32, `codebook_distance` [B] = ||sg(e0) - E_k||_2 and `e0` [B, m].
        """
        batch_size = batch["encoder_input_tokens"].shape[0]
        if self.prompt is not None:
            return jnp.broadcast_to(self.prompt[...], (batch_size, *self.prompt.shape)), {}
        if self.generator is None:
            return None, {}
        e0 = self.instance_embedding(batch)
        if self.codebook is None:
            return self.generator(e0), {}
        if self.oracle is None:
            e1, skill = self.codebook(e0)
        else:
            skill = self.oracle(e0)
            e1 = jnp.take(self.codebook.embeddings[...].astype(jnp.float32), skill, axis=0)
        return self.generator(e1), {"skill": skill, "codebook_distance": _safe_norm(e0 - e1), "e0": e0}

    def instance_embedding(self, batch: dict[str, jax.Array]) -> jax.Array:
        """e0 [B, m] of every instance: the batch's cached `instance_embedding` (sharpt_jax.embedding_cache) or the
        frozen encoder's output. The encoder is frozen in every stage: no gradient flows into it (and none is
        needed for Eq. 4's sg())."""
        if "instance_embedding" in batch:
            e0 = batch["instance_embedding"]
        else:
            e0 = self.instance_encoder(batch["instance_input_tokens"], batch["instance_input_mask"])
        return jax.lax.stop_gradient(e0)

    def __call__(self, batch: dict[str, jax.Array], rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        """Losses of one batch (dropout on when `rngs` is given).

        Returns a dict with `lm_loss` (token-mean cross-entropy over decoder_loss_weights), `codebook_loss`
        (beta * mean ||sg(e0) - E_k||; 0 without a codebook; the trainer adds it while the codebook trains), `logits`
        [B, S, vocab] float32 and, with a codebook, `skill` [B], `skill_counts` [K] (how many instances chose
        each skill), `codebook_distance` [B] and `e0` [B, m] (what dead-skill restarts read).
        """
        prompt, aux = self.prompts(batch)
        if prompt is not None:
            prompt = prompt.astype(self.t5.dtype)
        logits = self.t5(
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            attention_mask=batch["encoder_input_mask"],
            decoder_attention_mask=None,  # Causal masking suffices: padded targets carry zero loss weight.
            prompt_embeds=prompt,
            rngs=rngs,
        )
        lm_loss = token_cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
        codebook_loss = self.beta * jnp.mean(aux["codebook_distance"]) if "codebook_distance" in aux else jnp.zeros(())
        out = {"lm_loss": lm_loss, "codebook_loss": codebook_loss}
        out["logits"] = logits
        if "skill" in aux:
            out.update(skill=aux["skill"], codebook_distance=aux["codebook_distance"], e0=aux["e0"])
            out["skill_counts"] = jnp.bincount(aux["skill"], length=self.codebook.embeddings.shape[0])
        return out


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean over weighted target tokens of -log p(target). logits [B, S, V]; targets, weights [B, S]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    return jnp.sum(token_nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _safe_norm(x: jax.Array) -> jax.Array:
    """||x||_2 over the last axis with a finite gradient at x = 0 (where the plain norm's gradient is NaN)."""
    return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1), 1e-12))


def _sampled_vocab_init(t5: T5, exclude: tuple[int, ...] = ()):
    """Prompt-tuning init from rows of the token embedding table (Lester et al.'s best-performing choice).

    Rows are drawn from the 5,000 lowest ids, which in SentencePiece vocabularies are the most frequent pieces,
    leaving out the ids of `exclude` (without any, the draws are those of all 5,000).
    """
    allowed = jnp.asarray(np.setdiff1d(np.arange(min(5000, t5.config.vocab_size)), np.asarray(exclude, np.int64)))

    def init(key, shape, dtype):
        rows = allowed[jax.random.randint(key, (shape[0],), 0, len(allowed))]
        return t5.embed(rows).astype(dtype)

    return init
