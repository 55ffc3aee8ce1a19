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
from sharpt_jax import checkpoints, data, errors, hf, hf_weights, optim, scoring, sharding, source_stage
from sharpt_jax.errors import ConfigError
from sharpt_jax.models import methods
from sharpt_jax.models.encoder import POOLINGS
from sharpt_jax.models.sharpt import OracleRouting, SharPT
from sharpt_jax.models.t5 import T5, T5Config
from tasks import files, mixtures, registry, skills_world, sources

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
RANDOM_T5 = "random"
RANDOM_T5_SEED = 0  # Fixed: a source run and its targets must build the same random backbone.


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a field outside its allowed values or an unknown task (before anything slow is
    built: no file is read, no model loaded or downloaded)."""
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
            raise errors.not_one_of(f"config.{field}", value, values)
    for field in (
        "num_skills",
        "prompt_length",
        "num_train_steps",
        "batch_size",
        "save_every",
        "log_every",
        "micro_batches",
        "eval.batch_size",
        "eval.max_decode_len",
        *(f"sequence_length.{name}" for name in config.sequence_length),
    ):
        value = functools.reduce(lambda node, key: node[key], field.split("."), config)
        if value <= 0:
            raise ConfigError(f"config.{field} must be positive, got {value}")
    if config.codebook_restart_every < 0:
        raise ConfigError(
            f"config.codebook_restart_every must be >= 0 (0 = no restarts), got {config.codebook_restart_every}"
        )
    train_task_names(config)  # Unknown task names, before the source checkpoint is asked for.
    if config.mode == "train":
        source_stage.check_given(config)  # Before the models are loaded (restore_source reads it after).


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
            f"jax.distributed.initialize failed ({str(err).splitlines()[0]}); under SLURM start every process with "
            "srun (JAX reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID); "
            "outside TPU pods and SLURM, Open MPI or Kubernetes jobs set --config.coordinator_address=HOST:PORT "
            "--config.num_processes=N --config.process_id=I on every host"
        ) from err


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The device mesh of `config.mesh_shape`, checked against the devices and the training batch (evaluation pads
    its batches to the mesh: `data.eval_rows`)."""
    try:
        mesh = sharding.make_mesh(config.mesh_shape)
        data.check_batch_size(config.batch_size, mesh)
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
        return hf_weights.resolve_folder_on_hosts(path)
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


def configure_tasks(config: ml_collections.ConfigDict, files: Files | None) -> tuple[str, list[str]]:
    """Points every task at the config's data and vocabularies (none with `files=None`: enough to check the data
    before any model folder is resolved); returns (train task or mixture, eval tasks).

    `config.task` is a task or mixture without the "sharpt_" prefix, or a comma-separated list of tasks, which
    becomes the mixture `sharpt_mix_<a>+<b>+...` mixed like the registered ones. The eval tasks are the task
    itself or the mixture's tasks, as seqio names.
    """
    tasks.configure(
        data_dir=config.data_dir or None,
        t5_vocab=files and files.t5_vocab,
        encoder_vocab=files and files.encoder_vocab,
        mixture_cap=config.mixture_cap,
    )
    names = train_task_names(config)
    if len(names) == 1:
        name = names[0]
    else:
        name = registry.PREFIX + "mix_" + "+".join(n.removeprefix(registry.PREFIX) for n in names)
        if name not in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.add(name, names, default_rate=mixtures.capped_rate)
    if name in seqio.MixtureRegistry.names():
        return name, [t.name for t in seqio.get_mixture_or_task(name).tasks]
    return name, [name]


def train_task_names(config: ml_collections.ConfigDict) -> list[str]:
    """The seqio names of `config.task`'s tasks or mixture (a `files:PATH` task registered with `config.files`);
    ConfigError, with the closest names, for an unknown one or a task folder that cannot be used."""
    try:  # `files:PATH` and `skills:SPEC@N` tasks are registered here (tasks/files.py, skills_world.py).
        resolved = files.resolve(config.task, config.get("files"))
        short = [skills_world.resolve(n).removeprefix(registry.PREFIX) for n in resolved]
    except (sources.DataError, skills_world.SpecError) as err:
        raise ConfigError(f"config.task={config.task!r}: {err}") from err
    known = [n.removeprefix(registry.PREFIX) for n in (*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names())]
    for name in short:
        if name not in known:
            mixture_names = [
                n.removeprefix(registry.PREFIX)
                for n in seqio.MixtureRegistry.names()
                if not n.startswith(registry.PREFIX + "mix_")
            ]
            raise ConfigError(
                f"config.task={config.task!r}: unknown task {name}; closest: {', '.join(errors.closest(name, known))}"
                f" (the paper's tasks: {', '.join(tasks.names())}; mixtures: {', '.join(mixture_names)})"
            )
    return [registry.PREFIX + n for n in short]


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
    try:  # A missing file or TFDS builder, or a bad row: one line, before any model is downloaded or built.
        registry.check_data(configure_tasks(config, files=None)[1])
    except sources.DataError as err:
        raise ConfigError(str(err)) from err
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
      (model, identity): identity records the frozen models, {"t5": {"path", "checksum"}, "encoder": {...}}
      (plus "hub_id" and "revision" for a model named by its hub id), which a target run compares with its
      source run's. Call after `configure_tasks` (a random T5 takes its
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
            t5_identity = {
                "path": str(files.t5_folder),
                "checksum": checkpoints.folder_checksum(files.t5_folder),
                **hf_weights.hub_reference(config.t5, files.t5_folder),  # A hub model: its id and commit, to share.
            }
        encoder = (
            hf.load_encoder(files.encoder_folder, config.encoder_pooling, dtype=dtype, mesh=mesh)
            if methods.get(config.method).uses_encoder
            else None  # The baselines read only its vocabulary (the input pipeline is the same for all).
        )
    except (hf.CheckpointError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from err
    identity = {
        "t5": t5_identity,
        "encoder": {
            "path": str(files.encoder_folder),
            "checksum": checkpoints.folder_checksum(files.encoder_folder),
            **hf_weights.hub_reference(config.encoder, files.encoder_folder),
        },
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
        source_stage.check_same_models(metadata["identity"], identity, "the run being scored")
        if metadata.get("source"):
            source = config.copy_and_resolve_references()
            source.source_checkpoint, source.source_step = metadata["source"]["workdir"], metadata["source"]["step"]
            source_stage.restore_source(model, source, identity)
        graphdef, trainable, frozen = optim.split_model(model, config.method, config.stage)
        trainable = jax.device_put(trainable, sharding.state_shardings(trainable, mesh))
        return graphdef, trainable, jax.device_put(frozen, sharding.state_shardings(frozen, mesh))
