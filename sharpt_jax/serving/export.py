"""Adapters: one checkpoint of a run as a small, self-contained folder that `sharpt_jax.serving.predict` serves.

    python -m sharpt_jax.export --workdir RUN_DIR --out OUT_DIR [--step N]

exports the run's best validation checkpoint (eval/best.json; score the run first with --config.mode=eval) or
checkpoint N. OUT_DIR gets
  adapter.safetensors  what the method adds to the frozen models, float32 arrays under '/'-joined parameter
                       paths: SharPT "codebook/embeddings" [K, m] (frozen in the target stage, but the
                       adapter's own: it came from the run's source stage), "generator/w1/kernel" [m, d],
                       "generator/w1/bias" [d], "generator/w2/kernel" [d, d], "generator/w2/bias" [d],
                       "generator/positions" [L, d]; no_latent the generator alone; PromptTuning "prompt" [L, d]
  adapter.json         the method and shapes, the task(s) (a file-backed task with its settings: template,
                       target, labels, metric), the frozen T5 and instance encoder and both
                       vocabularies (paths and sha256), the run's sequence lengths and scoring (so that serving
                       scores as the evaluator did), and the scores of the step
  README.md            a model card: the same in words, with the scores of eval/results.json
and, for a PromptTuning run on a Hugging Face T5, the same prompt in PEFT's format, so that
`peft.PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(T5), OUT_DIR)` serves it:
  adapter_config.json        a PROMPT_TUNING, SEQ_2_SEQ_LM config: num_virtual_tokens L, token_dim d,
                             num_transformer_submodules 1 (the prompt goes before the encoder's input only, as ours),
                             base_model_name_or_path the T5's hub id (and revision) or folder
  adapter_model.safetensors  "prompt_embeddings" [L, d], float32

A frozen model named by its hub id is recorded with the id and the commit it resolved to (`hub_id`, `revision`),
beside the local path and sha256; a local folder is recorded as its path.

ModelTuning runs are refused: they train the whole T5, so their "adapter" would be a full copy of the backbone,
and mixed serving rests on one frozen backbone shared by every adapter. Serve them with run.py's eval mode.

`load_adapter` reads such a folder back and refuses, with one line, a backbone, encoder or vocabulary file whose
sha256 is not the one the adapter was trained with (a random T5, which has no folder, is checked where it is
built, in `sharpt_jax.serving.predict`). Where a recorded folder is missing (another machine), a model recorded
with its hub id is fetched from the hub (or found in its cache) at the recorded revision.
"""

import dataclasses
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import safetensors.numpy
from flax import nnx
from safetensors.numpy import save_file

from sharpt_jax import build, checkpoints, hf, optim, sharding, source_stage, storage
from sharpt_jax.models import methods
from tasks import files as file_tasks

FORMAT = "sharpt-adapter/1"
WEIGHTS, CONFIG, CARD = source_stage.ADAPTER_WEIGHTS, source_stage.ADAPTER_CONFIG, "README.md"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class AdapterError(build.ConfigError):
    """An adapter that cannot be written, read or served as asked; the message says what to change."""


def adapter_filter(method: str):
    """The NNX filter of what an adapter of `method` holds (the method table's `adapter` rule)."""
    return optim.path_filter(methods.get(method).adapter)


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A loaded adapter: its folder, adapter.json's content and its weights {"generator/w1/kernel": array}."""

    path: storage.Path
    config: dict
    params: dict[str, np.ndarray]

    @property
    def tasks(self) -> list[str]:
        return self.config["tasks"]

    @property
    def method(self) -> str:
        return self.config["method"]


# ---------------------------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------------------------


def export(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> storage.Path:
    """Writes the adapter of checkpoint `step` (default: eval/best.json's) of the run in `run_dir` to `out_dir`."""
    run_dir, out_dir = storage.path(run_dir), storage.path(out_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "checkpoints").is_dir():
        raise AdapterError(f"{run_dir}: not a run folder (config.json and checkpoints/, as run.py writes them)")
    config = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
    if methods.get(config.method).adapter is None:
        raise AdapterError(
            f"{run_dir} is a {config.method} run: it trains the whole T5, so it has no adapter to share a frozen "
            "backbone with others; score it with run.py --config.mode=eval"
        )
    results = storage.read_json(run_dir / "eval" / "results.json", {})
    best = storage.read_json(run_dir / "eval" / "best.json", {})
    if step is None:
        if not best:
            raise AdapterError(f"{run_dir}: no eval/best.json; score the run (--config.mode=eval) or pass --step N")
        step = best["step"]
    ckpts = checkpoints.Checkpoints(run_dir)
    try:
        if step not in ckpts.all_steps():
            raise AdapterError(f"--step {step}: {run_dir} has checkpoints of steps {ckpts.all_steps()}")
        metadata = ckpts.metadata(step)
        setup = build.prepare(config, mesh=sharding.make_mesh("-1,1"))
        files, eval_tasks = setup.files, setup.eval_tasks
        model = build.RunModel(config, setup, ckpts).at(step)
    finally:
        ckpts.close()
    params = {
        optim.path_str(path): np.asarray(jax.device_get(variable[...]))
        for path, variable in nnx.to_flat_state(nnx.state(model, adapter_filter(config.method)))
    }
    adapter = {
        "format": FORMAT,
        "method": config.method,
        "stage": config.stage,
        "tasks": [t.removeprefix("sharpt_") for t in eval_tasks],
        # File-backed tasks' folder and settings (tasks/files.py): serving formats and scores their rows as
        # training did, without the folder.
        "task_specs": {t.removeprefix("sharpt_"): file_tasks.record(t) for t in eval_tasks if file_tasks.record(t)},
        "run": {
            "workdir": str(storage.absolute(run_dir)),
            "step": step,
            "task": config.task,
            "source": metadata["source"],
        },
        "t5": {
            **metadata["identity"]["t5"],
            "random": config.t5_random.to_dict() if files.t5_folder is None else None,
            "vocab": {"path": str(files.t5_vocab.absolute()), "checksum": checkpoints.file_checksum(files.t5_vocab)},
        },
        "encoder": {
            **metadata["identity"]["encoder"],
            "pooling": config.encoder_pooling,
            "vocab": {
                "path": str(files.encoder_vocab.absolute()),
                "checksum": checkpoints.file_checksum(files.encoder_vocab),
            },
        },
        "model": {
            "backbone_dtype": config.backbone_dtype,
            "prompt_length": config.prompt_length,
            "num_skills": config.num_skills,
            "beta": config.beta,
        },
        "sequence_length": config.sequence_length.to_dict(),
        "eval": {"scoring": config.eval.scoring, "max_decode_len": config.eval.max_decode_len},
        "scores": {
            "step": step,
            "best_step": best.get("step"),
            **results.get(str(step), {}),
            "protocol": results.get("protocol"),
        },
    }
    # The weights first: a reader that finds adapter.json finds weights of the same export.
    with storage.replacing(out_dir / WEIGHTS) as tmp:
        save_file(params, tmp, metadata={"format": FORMAT})
    storage.write_json(out_dir / CONFIG, adapter)
    storage.write_text(out_dir / CARD, model_card(adapter, params))
    if config.method == "prompt_tuning" and files.t5_folder is not None:
        write_peft(out_dir, adapter, params["prompt"], files.t5_folder)
    return out_dir


def write_peft(out_dir: storage.Path, adapter: dict, prompt: np.ndarray, t5_folder: Path) -> None:
    """A PromptTuning adapter's prompt [L, d] in PEFT's format (see the module docstring), as
    `peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_transformer_submodules=1)` saves it."""
    t5, t5_config = adapter["t5"], hf.read_config(t5_folder)
    peft_config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM",
        "num_virtual_tokens": int(prompt.shape[0]),
        "token_dim": int(prompt.shape[1]),
        # One submodule: PEFT's default for seq2seq models (2) would also prepend prompts to the decoder's input.
        "num_transformer_submodules": 1,
        "num_attention_heads": t5_config["num_heads"],
        "num_layers": t5_config["num_layers"],
        "prompt_tuning_init": "RANDOM",  # How PEFT would initialise a new prompt; this one is trained.
        "base_model_name_or_path": t5.get("hub_id", t5["path"]),
        "revision": t5.get("revision"),
        "inference_mode": True,
    }
    with storage.replacing(out_dir / PEFT_WEIGHTS) as tmp:
        save_file({"prompt_embeddings": np.asarray(prompt, np.float32)}, tmp, metadata={"format": "pt"})
    storage.write_json(out_dir / PEFT_CONFIG, peft_config)


def model_card(adapter: dict, params: dict[str, np.ndarray]) -> str:
    """README.md of an adapter: what it is, what it needs, its scores and how to serve it."""
    scores, model = adapter["scores"], adapter["model"]
    t5, encoder = adapter["t5"], adapter["encoder"]
    lines = [
        f"# SharPT adapter: {', '.join(adapter['tasks'])}",
        "",
        f"Method `{adapter['method']}` ({adapter['stage']} stage), exported by `python -m sharpt_jax.export` from "
        f"`{adapter['run']['workdir']}`, checkpoint {scores['step']}"
        + (" (the best validation step)." if scores["step"] == scores["best_step"] else "."),
        "",
        "| | |",
        "|---|---|",
        f"| tasks | {', '.join(adapter['tasks'])} |",
        f"| frozen T5 | {_model_name(t5)} (sha256 `{t5['checksum']}`), {model['backbone_dtype']} |",
        f"| instance encoder | {_model_name(encoder)} (sha256 `{encoder['checksum']}`), {encoder['pooling']} pooling |",
        f"| prompt length L, skills K | {model['prompt_length']}, {model['num_skills']} |",
        f"| adapter parameters | {sum(int(v.size) for v in params.values()):,} ({', '.join(sorted(params))}) |",
        f"| sequence lengths | {adapter['sequence_length']} |",
        "",
        f"## Scores at step {scores['step']}",
        "",
    ]
    splits = [s for s in scores if s not in ("step", "best_step", "protocol")]
    if splits:
        lines += ["| split | metric | value |", "|---|---|---|"]
        lines += [f"| {s} | {k} | {v:.2f} |" for s in splits for k, v in scores[s].items()]
        protocol = scores["protocol"] or {}
        lines += ["", f"Scoring: {protocol.get('scoring')}. Split protocol: {protocol.get('split_protocol')}."]
    else:
        lines.append("Not scored (run.py --config.mode=eval scores a run).")
    lines += [
        "",
        "## Serving",
        "",
        "    python -m sharpt_jax.predict --adapter THIS_FOLDER --input rows.jsonl --output preds.jsonl",
        "",
        'Rows are `{"task": NAME, ...}` with the raw fields of the task\'s data files. Loading checks the sha256 of '
        "the frozen T5, the encoder and both vocabularies against the ones above.",
        "",
    ]
    if adapter["method"] == "prompt_tuning" and t5["path"] != build.RANDOM_T5:
        lines += [
            f"The prompt is also in PEFT's format ({PEFT_CONFIG}, {PEFT_WEIGHTS}): "
            "`peft.PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(T5), THIS_FOLDER)`.",
            "",
        ]
    return "\n".join(lines)


def _model_name(record: dict) -> str:
    """A frozen model as the card names it: its hub id and revision, or its path."""
    if "hub_id" in record:
        return f"`{record['hub_id']}` (revision `{record['revision']}`)"
    return f"`{record['path']}`"


# ---------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------


def load_adapter(path: str | Path, t5: str | Path | None = None, encoder: str | Path | None = None) -> Adapter:
    """Reads an adapter folder and checks the frozen models it needs.

    Args:
      path: the folder `export` wrote.
      t5, encoder: folders or hub ids to use instead of the recorded ones (e.g. after moving them); a vocabulary
        file that is no longer at its recorded path is looked for under the same name in that folder. Without
        them, a recorded folder that is missing is fetched by its recorded hub id and revision, if it has one.

    Returns:
      The Adapter, its config pointing at the folders and vocabularies found.

    Raises:
      AdapterError: not an adapter folder, a model that cannot be found, or a folder or vocabulary whose sha256
        differs from the recorded one.
    """
    path = storage.path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise AdapterError(f"{path}: not an adapter folder ({CONFIG} and {WEIGHTS}, as sharpt_jax.export writes)")
    config = json.loads((path / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise AdapterError(f"{path}: format {config.get('format')!r}, this code reads {FORMAT!r}")
    for part, override in (("t5", t5), ("encoder", encoder)):
        record = config[part]
        folder = Path(record["path"])
        if record["path"] != build.RANDOM_T5:
            folder = _find_folder(path, part, record, override)
            _check(path, part, folder, checkpoints.folder_checksum, record["checksum"])
            record["path"] = str(folder)
        elif override is not None:
            folder = Path(override)  # Of a random T5 only the vocabulary is looked for there.
        vocab = Path(record["vocab"]["path"])
        if not vocab.is_file() and folder.is_dir():
            vocab = folder / vocab.name
        _check(path, f"{part} vocabulary", vocab, checkpoints.file_checksum, record["vocab"]["checksum"])
        record["vocab"]["path"] = str(vocab)
    return Adapter(path=path, config=config, params=safetensors.numpy.load((path / WEIGHTS).read_bytes()))


def _find_folder(adapter: Path, part: str, record: dict, override: str | Path | None) -> Path:
    """The folder of the frozen `part`: `override` (a folder, or a hub id at its main revision), else the recorded
    folder, else, where that is missing, the recorded hub id at the recorded revision."""
    if override is not None:
        name, revision = str(override), None
    elif Path(record["path"]).exists() or "hub_id" not in record:
        return Path(record["path"])
    else:
        name, revision = record["hub_id"], record["revision"]
    try:
        return hf.resolve_folder(name, revision)
    except hf.CheckpointError as err:
        flag = "--t5" if part == "t5" else "--encoder"
        raise AdapterError(f"adapter {adapter} needs the {part}: {err}; pass {flag} FOLDER") from err


def _check(adapter: Path, what: str, found: Path, checksum, expected: str) -> None:
    flag = "--t5" if what.startswith("t5") else "--encoder"
    if not found.exists():
        raise AdapterError(f"adapter {adapter} needs the {what} {found}, which does not exist; pass {flag} FOLDER")
    actual = checksum(found)
    if actual != expected:
        raise AdapterError(
            f"adapter {adapter} was trained with a {what} of sha256 {expected[:12]}, {found} has {actual[:12]}; "
            f"pass {flag} FOLDER with the one it was trained with"
        )
