"""Target training: one low-resource task, from a source run's codebook and generator (Eq. 3).

    python run.py --config=configs/target.py:wic --workdir=DIR --config.source_checkpoint=SRC_DIR
    python run.py --workdir=DIR --config.mode=eval        # scores the run with its own DIR/config.json
    python run.py --config=configs/target.py:rte,method=prompt_tuning,size=large --workdir=DIR
    python run.py --config=configs/target.py:rte,method=no_source --workdir=DIR

Argument: the target task (boolq, cb, cola, copa, cr, mrpc, rte, stsb, wic, wsc; any registered task works:
an unknown one is refused with the closest names before anything is built), then `method=` and `size=` as in
source_mix.py. SharPT (and the `no_latent` ablation) needs
`--config.source_checkpoint`, the workdir of a source run of the same method: its codebook stays frozen and the
generator trains on from the source's. PromptTuning and ModelTuning train from their initialisation (the
paper's baselines), so they take no source checkpoint. `method=no_source` is the ablation "no source task
training" (Table 3): SharPT's codebook and generator learn on the target alone (Eq. 5), with SharPT's recipe and
the same steps and lengths as the other targets, and no source checkpoint; the report puts it on the
"no source training" row.
"""

from configs import common


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, common.METHOD_AND_SIZE, task="wic", method="sharpt", size="base")
    c = common.get_config()
    c.stage = "target"
    c.task = arg.task
    c.method = arg.method
    c.update(common.RECIPES[arg.method])  # The method's optimizer, learning rate and prompt length.
    c.size = arg.size
    c.t5 = common.T5_LM_ADAPT[arg.size]
    c.num_train_steps = 100_000  # The paper's target training.
    # Short answers: class names, numbers, a referent; 128 would only pad.
    c.sequence_length.targets = 16 if arg.task != "wsc" else 32
    return c
