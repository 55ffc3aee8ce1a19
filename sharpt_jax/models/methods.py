"""The methods of the paper's tables in one table: what each one builds, trains, exports and transfers.

Every part of the project that depends on the method reads this table: `SharPT` (which modules it builds),
`optim.split_model` (what trains in each stage: the freeze rule), `source_stage.restore_source` (what a target run takes
from its source run), `serving.export` (what an adapter holds) and the reports (how a table names it). The rules
are regular expressions over the '/'-joined parameter paths of `SharPT` (e.g. "generator/w1/kernel"); every
parameter a rule does not match is frozen, left behind or not exported.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of the paper's tables.

    Attributes:
      name: the config value (`config.method`).
      title: how tables and figures name it.
      prompt: "instance" (the generator makes each instance's prompt from its embedding), "task" (one learned
        prompt for every instance) or None (no prompt: the T5 itself trains).
      has_codebook: whether the generator reads the skill codebook's vector (the latent space) rather than e0.
      trainable: {stage: rule of the parameters that train in that stage} (Eq. 5 source, Eq. 3 target).
      adapter: rule of what an exported adapter holds beside the shared frozen models; None: not exportable
        (ModelTuning trains the whole T5, so nothing small is left to share).
      transferred: rule of what a target run starts from its source run's checkpoint; None: the method trains
        its targets from its own initialisation.
    """

    name: str
    title: str
    prompt: str | None
    has_codebook: bool
    trainable: dict[str, str]
    adapter: str | None
    transferred: str | None

    @property
    def uses_encoder(self) -> bool:
        """Whether it runs the frozen instance encoder (its prompts depend on the instance)."""
        return self.prompt == "instance"

    @property
    def trains_backbone(self) -> bool:
        return self.prompt is None


_LATENT = r"(codebook|generator)/.*"
_GENERATOR = r"generator/.*"

_BOTH = ("source", "target")
METHODS = {
    m.name: m
    for m in (
        # The full method: the codebook and generator learn in the source stage, the generator alone on a target.
        Method("sharpt", "SharPT", "instance", True, {"source": _LATENT, "target": _GENERATOR}, _LATENT, _LATENT),
        # Ablation "no source task training": SharPT's codebook and generator learn on the target alone (Eq. 5).
        Method("no_source", "no source training", "instance", True, dict.fromkeys(_BOTH, _LATENT), _LATENT, None),
        # Ablation "no latent space": the generator reads the instance embedding e0 directly.
        Method(
            "no_latent", "no latent space", "instance", False, dict.fromkeys(_BOTH, _GENERATOR), _GENERATOR, _GENERATOR
        ),
        # Baseline: one learned prompt [L, d] shared by every instance of a task (Lester et al., 2021).
        Method("prompt_tuning", "PromptTuning", "task", False, dict.fromkeys(_BOTH, "prompt"), "prompt", None),
        # Baseline: no prompt, every weight of the T5 trains.
        Method("model_tuning", "ModelTuning", None, False, dict.fromkeys(_BOTH, r"t5/.*"), None, None),
    )
}
STAGES = ("source", "target")
# The paper's codebook: a random start and no dead-skill restarts (sharpt_jax.codebook_health). A run whose codebook
# trained with other values (configs/common.py starts it by k-means) departs from the paper, and so do the target
# runs that take that codebook: the paper's report gives them rows of their own.
PAPER_CODEBOOK = {"codebook_init": "random", "codebook_restart_every": 0}


def get(name: str) -> Method:
    """The Method called `name`; ValueError naming the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
