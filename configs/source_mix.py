"""Source training: the skill codebook and prompt generator on a mixture of source tasks (Eq. 5).

    python run.py --config=configs/source_mix.py --workdir=DIR --config.data_dir=DATA_DIR
    python run.py --config=configs/source_mix.py:category,size=large --workdir=DIR --config.data_dir=DATA_DIR
    python run.py --config=configs/source_mix.py:high_to_low,method=no_latent --workdir=DIR --config.data_dir=DATA_DIR

Argument: `high_to_low` (15 high-resource sources, the default) or `category` (9 sources by task category),
then `method=` (sharpt | no_latent | prompt_tuning | model_tuning) and `size=` (small | base | large | xl | xxl
LM-adapted T5); another value is refused with the allowed ones and the closest. Score the saved checkpoints
afterwards with `python run.py --workdir=DIR --config.mode=eval` (the run's own config, DIR/config.json). Both
mixtures hold CxC, which exists only as files: pass `--config.data_dir=DATA_DIR`, the folder tasks/prepare.py
writes.
"""

from configs import common


def get_config(arg: str | None = None):
    choices = {"mixture": ("high_to_low", "category"), **common.METHOD_AND_SIZE}
    arg = common.parse_arg(arg, choices, mixture="high_to_low", method="sharpt", size="base")
    c = common.get_config()
    c.stage = "source"
    c.task = f"source_{arg.mixture}"
    c.method = arg.method
    c.update(common.RECIPES[arg.method])  # The method's optimizer, learning rate and prompt length.
    c.size = arg.size
    c.t5 = common.T5_LM_ADAPT[arg.size]
    c.num_train_steps = 80_000  # The paper's source training.
    return c
