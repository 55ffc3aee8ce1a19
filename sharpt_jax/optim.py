"""What trains and how it is optimised: the freeze rule applied to a model, and the optimizers.

Freezing is structural: the model state is split once into a trainable and a frozen part by the method table's
rule for the stage (`sharpt_jax.models.methods`). Gradients are taken only with respect to the trainable part (no
weight gradient is ever computed for the backbone), the optimizer holds state only for it, and the frozen part
is an input of the step that is never written, so it stays bit-identical (the step itself: `sharpt_jax.train`).
"""

import re
from collections.abc import Callable

import jax
import optax
from flax import nnx

from sharpt_jax.models import methods


def path_str(path: tuple) -> str:
    """('generator', 'w1', 'kernel') -> 'generator/w1/kernel', the paths the method table's rules match."""
    return "/".join(str(p) for p in path)


def path_filter(rule: str) -> Callable[[tuple, object], bool]:
    """The NNX filter `(path, value) -> bool` of the parameters whose '/'-joined path fully matches `rule`."""
    pattern = re.compile(rule)
    return lambda path, _: bool(pattern.fullmatch(path_str(path)))


def trainable_rule(method: str, stage: str) -> str:
    """The method table's rule of what trains in (method, stage)."""
    if stage not in methods.STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(methods.STAGES)}")
    return methods.get(method).trainable[stage]


def split_model(model: nnx.Module, method: str, stage: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Splits `model` into (graphdef, trainable, frozen) by the freeze rule; errors if nothing would train."""
    rule = trainable_rule(method, stage)
    graphdef, trainable, frozen = nnx.split(model, path_filter(rule), ...)
    if not jax.tree_util.tree_leaves(trainable):
        raise ValueError(f"method={method!r}, stage={stage!r}: the rule {rule!r} matches no parameter")
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
