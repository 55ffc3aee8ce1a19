"""What trains, how it is optimised, and the jitted train step.

Freezing is structural: the model state is split once into a trainable and a frozen part by the one rules
table `TRAINABLE`. Gradients are taken only with respect to the trainable part (no weight gradient is ever
computed for the backbone), the optimizer holds state only for it, and the frozen part is an input of the step
that is never written, so it stays bit-identical.
"""

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sharpt_jax import codebook

# (method, stage) -> regex over '/'-joined parameter paths of `SharPT` that are trained; everything else is frozen.
TRAINABLE = {
    ("sharpt", "source"): r"(codebook|generator)/.*",  # Eq. 5: skill vectors and generator
    ("sharpt", "target"): r"generator/.*",  # Eq. 3: codebook frozen, only the generator
    ("no_latent", "source"): r"generator/.*",
    ("no_latent", "target"): r"generator/.*",
    ("prompt_tuning", "source"): r"prompt",
    ("prompt_tuning", "target"): r"prompt",
    ("model_tuning", "source"): r"t5/.*",
    ("model_tuning", "target"): r"t5/.*",
}
STAGES = ("source", "target")


def path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def trainable_filter(method: str, stage: str) -> Callable[[tuple, object], bool]:
    """The NNX filter `(path, value) -> bool` selecting the trainable parameters of (method, stage)."""
    if (method, stage) not in TRAINABLE:
        raise ValueError(f"no trainable-parameter rule for method={method!r}, stage={stage!r}; see optim.TRAINABLE")
    pattern = re.compile(TRAINABLE[(method, stage)])
    return lambda path, _: bool(pattern.fullmatch(path_str(path)))


def split_model(model: nnx.Module, method: str, stage: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Splits `model` into (graphdef, trainable, frozen) by the rules table; errors if nothing would train."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(method, stage), ...)
    if not jax.tree_util.tree_leaves(trainable):
        raise ValueError(
            f"method={method!r}, stage={stage!r}: the rule {TRAINABLE[(method, stage)]!r} matches no parameter"
        )
    return graphdef, trainable, frozen


def count_params(state: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(state))


# ---------------------------------------------------------------------------------------------
# Optimizer.
# ---------------------------------------------------------------------------------------------


def learning_rate_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then constant (the paper's schedule)."""
    if warmup_steps <= 0:
        return optax.constant_schedule(learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps), optax.constant_schedule(learning_rate)],
        [warmup_steps],
    )


OPTIMIZERS = ("adam", "adafactor", "adafactor_t5")


def make_optimizer(name: str, learning_rate: float, warmup_steps: int) -> optax.GradientTransformation:
    """One of `OPTIMIZERS`, each as its anchor runs it (configs/common.py RECIPES says which method uses which):

    adam          the paper's (b1 0.9, b2 0.999, eps 1e-8).
    adafactor     Prompt Tuning's and SPoT's, as google-research/prompt-tuning configures T5X's Adafactor
                  (configs/models/t5_1_1_prompt.gin): factored second moments, decay 0.8, update clipping at 1.0,
                  no momentum, no parameter scaling (a prompt has no meaningful scale to follow), weight decay
                  1e-5 (param <- (1 - 1e-5) param - update, not scaled by the learning rate, as in T5X).
    adafactor_t5  T5's fine-tuning Adafactor (T5X's defaults): the same, with updates scaled by each parameter
                  block's RMS (at least 1e-3) and no weight decay.

    Adafactor's statistics are per parameter block, and each layer of a stacked T5 parameter is a block of its own
    (`per_layer`), as in T5X; Adam is elementwise, so stacking cannot change it.
    """
    schedule = learning_rate_schedule(learning_rate, warmup_steps)
    if name == "adam":
        return optax.adam(schedule)
    if name in ("adafactor", "adafactor_t5"):
        prompt_tuning = name == "adafactor"
        return per_layer(
            optax.adafactor(
                schedule,
                decay_rate=0.8,
                clipping_threshold=1.0,
                momentum=None,
                multiply_by_parameter_scale=not prompt_tuning,
                weight_decay_rate=1e-5 if prompt_tuning else None,
            )
        )
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def is_stacked(leaf) -> bool:
    """Whether a parameter holds stacked layers: its logical axes (an `nnx.Variable`'s metadata) start with
    'layers', as a T5 stack's do (`sharpt_jax.models.t5.Stack`)."""
    return isinstance(leaf, nnx.Variable) and (leaf.get_metadata().get("out_sharding") or (None,))[0] == "layers"


def per_layer(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` run on every parameter alone, and vmapped over the leading axis of stacked ones (`is_stacked`).

    For transformations whose statistics are per parameter (Adafactor's factored second moments, update clipping
    and parameter scale): on a stacked [layers, ...] parameter they would otherwise pool all layers, while T5X's
    Adafactor treats a scanned 'layers' axis as a batch axis. The update of a stacked parameter then equals the
    updates of its layers as separate parameters. The state is a list of `inner`'s states, one per parameter;
    `update` needs `params` (the step passes them).
    """

    def flatten(tree):
        return jax.tree.flatten(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))

    def one(leaf) -> optax.GradientTransformation:
        return optax.GradientTransformation(jax.vmap(inner.init), jax.vmap(inner.update)) if is_stacked(leaf) else inner

    def init(params):
        return [one(p).init(p) for p in flatten(params)[0]]

    def update(updates, state, params):
        leaves, treedef = flatten(updates)
        new = [one(u).update(u, s, p) for u, s, p in zip(leaves, state, flatten(params)[0], strict=True)]
        return treedef.unflatten([u for u, _ in new]), [s for _, s in new]

    return optax.GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# Train step.
# ---------------------------------------------------------------------------------------------


# The model outputs a micro-batch step keeps: the losses, and what SharPT's metrics and restarts read.
KEPT_OUTPUTS = ("lm_loss", "codebook_loss", "skill_counts", "e0", "codebook_distance")


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    restart_every: int = 0,
    num_train_steps: int = 0,
    micro_batches: int = 1,
):
    """Returns `train_step(state, frozen, batch, dropout_key) -> (state, metrics)`, not yet jitted.

    `state` is the plain pytree {"trainable": nnx.State, "opt": optax state, "step": int32 []} (plus
    "skill_window": int32 [K] with restarts); the caller jits with `donate_argnums=(0,)` so the trainable
    parameters and optimizer state are updated in place. `frozen` is read only. Dropout masks come from
    fold_in(dropout_key, step), so a resumed run draws the same masks. Metrics are device scalars (plus
    `skill_counts` [K] for SharPT); nothing here syncs with the host.

    restart_every, num_train_steps: with N > 0, after every N-th step the skills that no instance chose in those N
      steps are re-seated on far instance embeddings (`codebook.restart_dead_skills`; metric `restarted_skills`
      counts them), except in the last N steps of the run's `num_train_steps`, which leave a re-seated skill too
      little training to be any use to the target tasks.
    micro_batches: M > 1 accumulates the gradient over M micro-batches of B / M rows (rows i, i + M, ...: each
      micro-batch keeps rows on every device of the data axis) under `jax.lax.scan`, then makes one update. Each
      micro-batch's loss is weighted by its share of the batch's target tokens (the LM loss) and by 1 / M (the
      codebook term), so the update equals the full batch's; dropout draws micro-batch i's masks from
      fold_in(key, i), so with dropout the masks (not their distribution) differ from the full batch's.
    """

    def objective(trainable, frozen, batch, key, lm_share, codebook_share):
        """The batch's share of the step's loss and its model outputs."""
        model = nnx.merge(graphdef, trainable, frozen)
        # Rngs are stateful, so they are made inside the differentiated function's trace.
        out = model(batch, rngs=nnx.Rngs(dropout=key))
        # Eq. 5 adds the codebook term while the codebook trains (source stage). Frozen (target stage, Eq. 3),
        # it has no gradient to give, so the objective, and the logged loss, is the LM loss alone.
        loss = lm_share * out["lm_loss"]
        if "codebook" in trainable:
            loss = loss + codebook_share * out["codebook_loss"]
        return loss, out

    grad_fn = jax.grad(objective, has_aux=True)

    def gradients(trainable, frozen, batch, key):
        """(gradient, metrics and per-row outputs) of the whole batch, in micro-batches when M > 1."""
        if micro_batches == 1:
            grads, out = grad_fn(trainable, frozen, batch, key, 1.0, 1.0)
            return grads, out
        micro = jax.tree.map(lambda x: x.reshape(-1, micro_batches, *x.shape[1:]).swapaxes(0, 1), batch)
        weights = jnp.sum(micro["decoder_loss_weights"].astype(jnp.float32), axis=(1, 2))  # [M]
        lm_shares = weights / jnp.maximum(jnp.sum(weights), 1.0)

        def accumulate(grads, inputs):
            batch_i, lm_share, i = inputs
            grads_i, out = grad_fn(trainable, frozen, batch_i, jax.random.fold_in(key, i), lm_share, 1 / micro_batches)
            kept = {k: v for k, v in out.items() if k in KEPT_OUTPUTS}  # Not the logits: the scan stacks these.
            return jax.tree.map(jnp.add, grads, grads_i), (kept, lm_share)

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        grads, (outs, shares) = jax.lax.scan(accumulate, zeros, (micro, lm_shares, jnp.arange(micro_batches)))
        out = {
            "lm_loss": jnp.sum(shares * outs["lm_loss"]),
            "codebook_loss": jnp.mean(outs["codebook_loss"]),
        }
        if "skill_counts" in outs:  # Per-row outputs of all micro-batches, [M, B / M, ...] -> [B, ...].
            out["skill_counts"] = jnp.sum(outs["skill_counts"], axis=0)
            for name in ("e0", "codebook_distance"):
                out[name] = outs[name].reshape(-1, *outs[name].shape[2:])
        return grads, out

    def train_step(state, frozen, batch, dropout_key):
        step = state["step"]
        key = jax.random.fold_in(dropout_key, step)
        grads, out = gradients(state["trainable"], frozen, batch, key)
        updates, opt_state = optimizer.update(grads, state["opt"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        trains_codebook = "codebook" in state["trainable"]
        metrics = {
            "loss": out["lm_loss"] + out["codebook_loss"] if trains_codebook else out["lm_loss"],
            "lm_loss": out["lm_loss"],
            "codebook_loss": out["codebook_loss"],
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(step),
        }
        if "skill_counts" in out:
            metrics["skill_counts"] = out["skill_counts"]
        new_state = {"trainable": trainable, "opt": opt_state, "step": step + 1}
        if restart_every:
            window = state["skill_window"] + out["skill_counts"]
            restart = ((step + 1) % restart_every == 0) & (step + 1 + restart_every <= num_train_steps)
            new_state["trainable"] = jax.lax.cond(
                restart,
                lambda t: codebook.restart_dead_skills(t, window, out["e0"], out["codebook_distance"]),
                lambda t: t,
                trainable,
            )
            new_state["skill_window"] = jnp.where(restart, jnp.zeros_like(window), window)
            metrics["restarted_skills"] = jnp.where(restart, jnp.sum(window == 0), 0).astype(jnp.int32)
        return new_state, metrics

    return train_step


def dropout_key(seed: int) -> jax.Array:
    """The run's dropout key (rbg). Each dropout call draws two 32-bit words from its own key (nnx.Rngs splits
    it off fold_in(key, step)) and hashes element indices with them (`layers.dropout`), so masks depend only on
    (seed, step), not on the mesh (the trainer tests check that)."""
    return jax.random.key(seed, impl="rbg")


def init_train_state(trainable: nnx.State, optimizer: optax.GradientTransformation, restart_window: int = 0) -> dict:
    """The train state at step 0; `restart_window` = K adds the dead-skill restarts' window counts [K]."""
    state = {"trainable": trainable, "opt": optimizer.init(trainable), "step": jnp.zeros((), jnp.int32)}
    if restart_window:
        state["skill_window"] = jnp.zeros((restart_window,), jnp.int32)
    return state
