"""From a config to what a run needs: checked fields, configured tasks, and the SharPT model with its identity.

The trainer, the evaluator and the demo build everything through these functions, so a target run and the
source run it starts from resolve models, vocabularies and tasks the same way. Every user mistake found here
raises `ConfigError` with one line that says what to change; run.py prints it instead of a traceback.
"""

import dataclasses
import functools
import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import seqio
from flax import nnx
from jax.experimental import multihost_utils

import tasks
from sharpt_jax import checkpoints, data, hf, optim, scoring, sharding
from sharpt_jax.models import methods
from sharpt_jax.models.encoder import POOLINGS
from sharpt_jax.models.sharpt import OracleRouting, SharPT
from sharpt_jax.models.t5 import T5, T5Config
from tasks import mixtures, registry, skills_world

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
RANDOM_T5 = "random"
RANDOM_T5_SEED = 0  # Fixed: a source run and its targets must build the same random backbone.


class ConfigError(ValueError):
    """A config or command-line mistake; its message is one line that says what to change."""


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a field outside its allowed values (before anything slow is built)."""
    allowed = {
        "method": tuple(methods.METHODS),
        "stage": methods.STAGES,
        "optimizer": optim.OPTIMIZERS,
        "backbone_dtype": tuple(DTYPES),
        "encoder_pooling": POOLINGS,
        "eval.scoring": scoring.SCORING,
        "codebook_init": ("random", "kmeans"),
    }
    for field, values in allowed.items():
        value = functools.reduce(lambda node, key: node[key], field.split("."), config)
        if value not in values:
            raise ConfigError(f"config.{field}={value!r} is not one of {', '.join(values)}")
    for field in (
        "num_skills",
        "prompt_length",
        "num_train_steps",
        "batch_size",
        "save_every",
        "log_every",
        "micro_batches",
    ):
        if config[field] <= 0:
            raise ConfigError(f"config.{field} must be positive, got {config[field]}")
    if config.codebook_restart_every < 0:
        raise ConfigError(
            f"config.codebook_restart_every must be >= 0 (0 = no restarts), got {config.codebook_restart_every}"
        )
    if needs_source(config) and config.mode == "train" and not config.source_checkpoint:
        raise ConfigError(
            f"method {config.method} in stage target starts from a source run: set "
            "--config.source_checkpoint=SRC_DIR (the workdir of configs/source_mix.py)"
        )


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins the multi-host runtime (`jax.distributed.initialize`) when `config.distributed` or any of its three
    fields is set; unset fields are left to JAX's cluster detection (TPU pods, SLURM, Open MPI, Kubernetes).
    Call it once per process, before any JAX computation."""
    explicit = {
        "coordinator_address": config.coordinator_address or None,
        "num_processes": config.num_processes if config.num_processes > 0 else None,
        "process_id": config.process_id if config.process_id >= 0 else None,
    }
    if not config.distributed and all(value is None for value in explicit.values()):
        return
    if explicit["num_processes"] is not None and explicit["process_id"] is not None:
        if explicit["process_id"] >= explicit["num_processes"]:
            raise ConfigError(
                f"config.process_id={config.process_id} is not below config.num_processes={config.num_processes}"
            )
    try:
        jax.distributed.initialize(**explicit)
    except (ValueError, RuntimeError) as err:  # Nothing found to fill an unset field, or no coordinator.
        raise ConfigError(
            f"jax.distributed.initialize failed ({str(err).splitlines()[0]}); outside TPU pods and SLURM, Open MPI "
            "or Kubernetes jobs set --config.coordinator_address=HOST:PORT --config.num_processes=N "
            "--config.process_id=I on every host"
        ) from err


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The device mesh of `config.mesh_shape`, checked against the devices and both batch sizes."""
    try:
        mesh = sharding.make_mesh(config.mesh_shape)
        data.check_batch_size(config.batch_size, mesh)
        data.check_batch_size(config.eval.batch_size, mesh)
        if config.batch_size % config.micro_batches:
            raise ValueError(f"config.micro_batches={config.micro_batches} does not divide config.batch_size")
        data.check_batch_size(config.batch_size // config.micro_batches, mesh)  # Every micro-batch spans the mesh.
    except ValueError as err:
        raise ConfigError(f"config.mesh_shape={config.mesh_shape!r}: {err}") from err
    return mesh


# ---------------------------------------------------------------------------------------------
# Files: model folders and vocabularies.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Files:
    """Where the frozen models and vocabularies of a run come from (None: a random T5)."""

    t5_folder: Path | None
    encoder_folder: Path
    t5_vocab: Path
    encoder_vocab: Path


def _folder(path: str, what: str) -> Path:
    try:
        return hf.resolve_folder(path)
    except hf.CheckpointError as err:
        raise ConfigError(f"{what}: {err}") from err


def _file(path: str, default_folder: Path | None, default_name: str, field: str) -> Path:
    if path:
        found = Path(path).expanduser()
    elif default_folder is not None:
        found = default_folder / default_name
    else:
        raise ConfigError(f"config.{field} is empty: a random T5 needs a SentencePiece model file")
    if not found.is_file():
        raise ConfigError(f"config.{field}: {found} is not a file; set --config.{field}=PATH")
    return found


def resolve_files(config: ml_collections.ConfigDict) -> Files:
    """Finds (or downloads, when online) the T5 and encoder folders and the two vocabulary files."""
    t5_folder = None if config.t5 == RANDOM_T5 else _folder(config.t5, "config.t5")
    encoder_folder = _folder(config.encoder, "config.encoder")
    return Files(
        t5_folder=t5_folder,
        encoder_folder=encoder_folder,
        t5_vocab=_file(config.t5_vocab, t5_folder, "spiece.model", "t5_vocab"),
        encoder_vocab=_file(config.encoder_vocab, encoder_folder, "vocab.txt", "encoder_vocab"),
    )


# ---------------------------------------------------------------------------------------------
# Tasks.
# ---------------------------------------------------------------------------------------------


def configure_tasks(config: ml_collections.ConfigDict, files: Files) -> tuple[str, list[str]]:
    """Points every task at the config's data and vocabularies; returns (train task or mixture, eval tasks).

    `config.task` is a task or mixture without the "sharpt_" prefix, or a comma-separated list of tasks, which
    becomes the mixture `sharpt_mix_<a>+<b>+...` mixed like the registered ones. The eval tasks are the task
    itself or the mixture's tasks, as seqio names.
    """
    tasks.configure(
        data_dir=config.data_dir or None,
        t5_vocab=files.t5_vocab,
        encoder_vocab=files.encoder_vocab,
        mixture_cap=config.mixture_cap,
    )
    try:  # A skills-world spec target ("skills:SPEC@N") is registered on first use.
        short = [skills_world.resolve(n.strip()).removeprefix(registry.PREFIX) for n in config.task.split(",")]
    except skills_world.SpecError as err:
        raise ConfigError(f"config.task: {err}") from err
    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    names = [registry.PREFIX + n for n in short]
    unknown = [s for s, n in zip(short, names, strict=True) if n not in known]
    if unknown:
        raise ConfigError(
            f"config.task={config.task!r}: unknown task {', '.join(unknown)}; tasks are "
            f"{', '.join(tasks.names())}, mixtures source_high_to_low and source_category"
        )
    if len(names) == 1:
        name = names[0]
    else:
        name = registry.PREFIX + "mix_" + "+".join(n.removeprefix(registry.PREFIX) for n in names)
        if name not in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.add(name, names, default_rate=mixtures.capped_rate)
    if name in seqio.MixtureRegistry.names():
        return name, [t.name for t in seqio.get_mixture_or_task(name).tasks]
    return name, [name]


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every program builds from a config before its models: the files, the tasks and the mesh."""

    files: Files
    train_task: str  # The seqio task or mixture the run trains on.
    eval_tasks: list[str]  # The seqio tasks it is scored on (the task, or the mixture's tasks).
    mesh: jax.sharding.Mesh


def prepare(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Setup:
    """Checks the config, resolves its files, points the tasks at them and makes the mesh (the config's, unless
    `mesh` is given): the preamble of training, evaluation, export and the experiments."""
    check_config(config)
    files = resolve_files(config)
    train_task, eval_tasks = configure_tasks(config, files)
    return Setup(files, train_task, eval_tasks, make_mesh(config) if mesh is None else mesh)


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


def run_config(base: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """A copy of `base` for one training run of a program that chains runs (the demo, the experiments): mode
    "train" and `fields` set."""
    config = base.copy_and_resolve_references()
    config.mode = "train"
    config.update(fields)
    return config


def model_config(**fields) -> ml_collections.ConfigDict:
    """A config of only what `resolve_files` and `build_model` read (`fields` over these defaults), for programs
    that build the frozen models without a run's config (serving, from an adapter's record)."""
    config = ml_collections.ConfigDict(
        dict(t5_random={}, t5_vocab="", encoder_vocab="", scan_layers=True, remat=False, seed=0)
    )
    config.update(fields)
    return config


def _random_t5(config: ml_collections.ConfigDict, dtype, param_dtype, mesh: jax.sharding.Mesh) -> T5:
    """A T5 of `config.t5_random` drawn from RANDOM_T5_SEED by one jitted program straight into its shardings
    (random bits do not depend on the sharding, so every mesh draws the same weights)."""
    vocab_size = registry.OUTPUT_FEATURES["targets"].vocabulary.vocab_size
    t5_config = T5Config(vocab_size=vocab_size, **config.t5_random.to_dict())

    def init() -> T5:
        return T5(
            t5_config,
            dtype=dtype,
            param_dtype=param_dtype,
            scan_layers=config.scan_layers,
            remat=config.remat,
            rngs=nnx.Rngs(RANDOM_T5_SEED),
        )

    graphdef, abstract = nnx.split(nnx.eval_shape(init))
    state = jax.jit(lambda: nnx.split(init())[1], out_shardings=sharding.state_shardings(abstract, mesh))()
    return nnx.merge(graphdef, state)


def _state_checksum(module: nnx.Module) -> str:
    """sha256 over a module's parameter paths, shapes and bytes (identifies a randomly initialised backbone)."""
    digest = hashlib.sha256()
    for path, value in sorted(nnx.to_flat_state(nnx.state(module, nnx.Param)), key=lambda kv: kv[0]):
        array = np.asarray(multihost_utils.process_allgather(value[...], tiled=True))  # Whatever its sharding.
        digest.update(f"{optim.path_str(path)}\0{array.shape}\0{array.dtype}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def build_model(config: ml_collections.ConfigDict, files: Files, mesh: jax.sharding.Mesh) -> tuple[SharPT, dict]:
    """The SharPT model of the config (frozen weights loaded, new parameters initialised from config.seed).

    The frozen T5 and instance encoder are built abstractly and their weights placed straight into their
    shardings on `mesh` (read shard by shard from the checkpoint, or drawn there for a random T5): no full copy
    ever sits on one device. The new parameters (prompt, codebook, generator) are small and built on the host.

    Returns:
      (model, identity): identity records the frozen models, {"t5": {"path", "checksum"}, "encoder": {...}},
      which a target run compares with its source run's. Call after `configure_tasks` (a random T5 takes its
      vocabulary size from the configured T5 vocabulary).
    """
    dtype = DTYPES[config.backbone_dtype]
    # Trained weights stay float32 (ModelTuning); frozen ones are stored in the compute dtype.
    param_dtype = jnp.float32 if methods.get(config.method).trains_backbone else dtype
    try:
        if files.t5_folder is None:
            t5 = _random_t5(config, dtype, param_dtype, mesh)
            t5_identity = {"path": RANDOM_T5, "checksum": _state_checksum(t5)}
        else:
            t5 = hf.load_t5(
                files.t5_folder, dtype, param_dtype, scan_layers=config.scan_layers, remat=config.remat, mesh=mesh
            )
            t5_identity = {"path": str(files.t5_folder), "checksum": checkpoints.folder_checksum(files.t5_folder)}
        encoder = (
            hf.load_encoder(files.encoder_folder, config.encoder_pooling, dtype=dtype, mesh=mesh)
            if methods.get(config.method).uses_encoder
            else None  # The baselines read only its vocabulary (the input pipeline is the same for all).
        )
    except (hf.CheckpointError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from err
    identity = {
        "t5": t5_identity,
        "encoder": {"path": str(files.encoder_folder), "checksum": checkpoints.folder_checksum(files.encoder_folder)},
    }
    model = SharPT(
        t5,
        encoder,
        method=config.method,
        prompt_length=config.prompt_length,
        num_skills=config.num_skills,
        beta=config.beta,
        rngs=nnx.Rngs(config.seed),
        # .get: configs of serving (model_config) and of runs recorded before these fields existed lack them.
        prompt_init_exclude=tuple(_token_id(word) for word in config.get("prompt_init_exclude", ())),
    )
    if config.get("oracle_routing"):
        model.oracle = oracle_routing(config, model)
    return model, identity


def _token_id(word: str) -> int:
    """The id of a word that is one piece of the configured T5 vocabulary (config.prompt_init_exclude)."""
    ids = registry.OUTPUT_FEATURES["targets"].vocabulary.encode(word)
    if len(ids) != 1:
        raise ConfigError(f"config.prompt_init_exclude: {word!r} is not one piece of the T5 vocabulary ({ids})")
    return ids[0]


def oracle_routing(config: ml_collections.ConfigDict, model: SharPT) -> OracleRouting:
    """The oracle-routing diagnostic of `config.oracle_routing` (see configs/common.py), checked against the model."""
    if model.codebook is None:
        raise ConfigError(f"config.oracle_routing is set, but method {config.method} has no codebook to route to")
    try:
        with np.load(Path(config.oracle_routing).expanduser()) as saved:
            keys, skills = saved["keys"], saved["skills"]
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(
            f"config.oracle_routing={config.oracle_routing}: not an .npz of keys and skills ({err})"
        ) from err
    num_skills, features = model.codebook.embeddings.shape
    if keys.ndim != 2 or keys.shape[1] != features or skills.shape != keys.shape[:1] or skills.max() >= num_skills:
        raise ConfigError(
            f"config.oracle_routing={config.oracle_routing}: keys {keys.shape} and skills {skills.shape} do not fit "
            f"a codebook of {num_skills} vectors of width {features}"
        )
    return OracleRouting(keys, skills)


# ---------------------------------------------------------------------------------------------
# Target stage: start from the source run.
# ---------------------------------------------------------------------------------------------


def needs_source(config: ml_collections.ConfigDict) -> bool:
    """Whether the run starts from a source run: the target stage of a method that transfers."""
    return methods.get(config.method).transferred is not None and config.stage == "target"


def check_same_models(
    saved: dict,
    current: dict,
    where: str,
    error: type[ConfigError] = ConfigError,
    fix: str = "set --config.{part} to that run's",
) -> None:
    """`error` unless the frozen T5 and encoder recorded in `saved` ({"t5": {"path", "checksum"}, "encoder": ...},
    of the run or adapter named by `where`) are the ones of `current` (built here); `fix` ends the message."""
    for part in ("t5", "encoder"):
        theirs, ours = saved[part], current[part]
        if theirs["checksum"] != ours["checksum"]:
            raise error(
                f"{where} was trained with {part} {theirs['path']} (sha256 {theirs['checksum'][:12]}), here it is "
                f"{ours['path']} (sha256 {ours['checksum'][:12]}); " + fix.format(part=part)
            )


def restore_source(model, config: ml_collections.ConfigDict, identity: dict) -> dict:
    """Loads what the source stage of `config.method` trained (SharPT: codebook and generator) from
    `config.source_checkpoint` into `model`, after checking that the source run used the same frozen T5 and
    instance encoder and the same shapes. Returns {"workdir", "step"} for the records."""
    src = Path(config.source_checkpoint)
    missing = ConfigError(f"config.source_checkpoint={src}: no checkpoints under {src / 'checkpoints'}")
    if not (src / "checkpoints").is_dir():  # Checked before opening it: opening would create the folder.
        raise missing
    ckpts = checkpoints.Checkpoints(src)
    try:
        steps = ckpts.all_steps()
        if not steps:
            raise missing
        step = steps[-1] if config.source_step < 0 else config.source_step
        if step not in steps:
            raise ConfigError(f"config.source_step={step}: {src} has checkpoints of steps {steps}")
        meta = ckpts.metadata(step)
        if (meta["method"], meta["stage"]) != (config.method, "source"):
            raise ConfigError(
                f"{src} is a {meta['method']} {meta['stage']}-stage run, not a {config.method} source-stage run"
            )
        check_same_models(meta["identity"], identity, str(src))
        for field in ("num_skills", "prompt_length"):
            if meta["config"][field] != config[field]:
                raise ConfigError(
                    f"{src} was trained with {field}={meta['config'][field]}, this run has {config[field]}; "
                    f"set --config.{field}={meta['config'][field]}"
                )
        source_params = nnx.state(model, optim.path_filter(methods.get(config.method).transferred))
        nnx.update(model, ckpts.restore_params(step, source_params))
    finally:
        ckpts.close()
    return {"workdir": str(src.absolute()), "step": step}


# ---------------------------------------------------------------------------------------------
# A run's model at any of its checkpoints.
# ---------------------------------------------------------------------------------------------


class RunModel:
    """The model of the run whose checkpoints `ckpts` holds: `at(step)` is the SharPT with that checkpoint's
    trainable parameters, on the setup's mesh.

    The frozen parts (and a target run's frozen codebook, from the source checkpoint its metadata names) are
    built once, on the first `at`, after checking that the run used the same frozen models; each `at` then only
    restores the checkpoint's trainable parameters.
    """

    def __init__(self, config: ml_collections.ConfigDict, setup: Setup, ckpts: checkpoints.Checkpoints):
        self.config, self.setup, self.ckpts = config, setup, ckpts
        self._parts = None

    def at(self, step: int) -> SharPT:
        if self._parts is None:
            self._parts = self._build(self.ckpts.metadata(self.ckpts.all_steps()[-1]))
        graphdef, trainable, frozen = self._parts
        return nnx.merge(graphdef, self.ckpts.restore_params(step, trainable), frozen)

    def _build(self, metadata: dict):
        """(graphdef, trainable, frozen) placed on the mesh; the trainable part holds the initial values."""
        config, mesh = self.config, self.setup.mesh
        model, identity = build_model(config, self.setup.files, mesh)
        check_same_models(metadata["identity"], identity, "the run being scored")
        if metadata.get("source"):
            source = config.copy_and_resolve_references()
            source.source_checkpoint, source.source_step = metadata["source"]["workdir"], metadata["source"]["step"]
            restore_source(model, source, identity)
        graphdef, trainable, frozen = optim.split_model(model, config.method, config.stage)
        trainable = jax.device_put(trainable, sharding.state_shardings(trainable, mesh))
        return graphdef, trainable, jax.device_put(frozen, sharding.state_shardings(frozen, mesh))
