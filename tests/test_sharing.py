"""Adapters people can share: a frozen T5 named by its hub id (a fake hub cache, offline) is recorded with its id
and revision and found again by them; a target run starts from an exported source adapter exactly as from the
source run; a PromptTuning adapter loaded by PEFT on Hugging Face's T5 gives our logits and predictions."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import seqio
import torch
import transformers
from tiny_run import make_assets, tiny_config

from sharpt_jax import build, evaluate, hf, train
from sharpt_jax import predict as predict_command
from sharpt_jax.serving import export, predict
from sharpt_jax.serving.export import AdapterError, load_adapter

ROOT = Path(__file__).resolve().parents[1]
HUB_ID, REVISION = "tiny-org/tiny-t5", "0123456789abcdef0123456789abcdef01234567"


def make_hub_t5(hub_cache: Path, t5_vocab: str) -> Path:
    """A random 1-layer Hugging Face T5 over `t5_vocab` (saved with its spiece.model) laid out in `hub_cache` as
    huggingface_hub caches the model HUB_ID at commit REVISION; returns the snapshot folder."""
    repo = hub_cache / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=seqio.SentencePieceVocabulary(t5_vocab).vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        decoder_start_token_id=0,  # As T5 checkpoints on the hub have it (generate needs it).
    )
    transformers.T5ForConditionalGeneration(config).save_pretrained(snapshot)
    shutil.copy(t5_vocab, snapshot / "spiece.model")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(assets, snapshot folder) with huggingface_hub reading the fake hub cache, offline."""
    assets = make_assets(tmp_path_factory.mktemp("assets"))
    cache = tmp_path_factory.mktemp("hub")
    snapshot = make_hub_t5(cache, assets["t5_vocab"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield assets, snapshot


def hub_config(assets: dict, **overrides):
    """tiny_config on the hub T5 (by id), its vocabulary from the snapshot; 4 steps, one checkpoint."""
    fields = dict(t5=HUB_ID, t5_vocab="", num_train_steps=4, save_every=4, eval_every=0)
    config = tiny_config(assets, **{**fields, **overrides})
    config.eval.splits = ("validation",)
    return config


@pytest.fixture(scope="module")
def prompt_tuning(hub, tmp_path_factory):
    """(config, workdir, adapter folder) of a scored PromptTuning run on boolq with the hub T5."""
    assets, _ = hub
    root = tmp_path_factory.mktemp("prompt_tuning")
    config = hub_config(assets, stage="target", task="boolq", method="prompt_tuning")
    train.train(config, root / "run")
    evaluate.evaluate_checkpoints(config, root / "run")
    return config, root / "run", export.export(root / "run", root / "adapter")


def test_hub_id_and_revision_recorded_and_resolved(hub, prompt_tuning, tmp_path, capsys):
    _, snapshot = hub
    assert hf.resolve_folder(HUB_ID) == snapshot  # huggingface_hub finds the cached snapshot offline.
    config, workdir, adapter = prompt_tuning
    metadata = json.loads((workdir / "checkpoints" / "4" / "metadata" / "metadata").read_text())
    t5 = json.loads((adapter / "adapter.json").read_text())["t5"]
    for record in (metadata["identity"]["t5"], t5):
        assert (record["hub_id"], record["revision"], record["path"]) == (HUB_ID, REVISION, str(snapshot))
    assert "hub_id" not in metadata["identity"]["encoder"]  # A local folder stays a path.
    assert f"`{HUB_ID}` (revision `{REVISION}`)" in (adapter / "README.md").read_text()

    # On a machine without the recorded folder, the hub id at the recorded revision finds the model; a
    # revision that is not in the cache (offline) is one clear error.
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    record = json.loads((moved / "adapter.json").read_text())
    record["t5"]["path"], record["t5"]["vocab"]["path"] = str(tmp_path / "gone"), str(tmp_path / "gone/spiece.model")
    (moved / "adapter.json").write_text(json.dumps(record))
    loaded = load_adapter(moved)
    assert (loaded.config["t5"]["path"], loaded.config["t5"]["vocab"]["path"]) == (
        str(snapshot),
        str(snapshot / "spiece.model"),
    )
    record["t5"]["revision"] = "f" * 40
    (moved / "adapter.json").write_text(json.dumps(record))
    with pytest.raises(AdapterError, match=f"needs the t5: {HUB_ID}: no local folder .* pass --t5 FOLDER"):
        load_adapter(moved)
    assert load_adapter(moved, t5=HUB_ID).config["t5"]["path"] == str(snapshot)  # --t5 HUB_ID: its main.

    # predict --t5 takes the hub id; the checksums are still checked (a T5 of other bytes is refused).
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"task": "boolq", "question": "is it?", "passage": "It is.", "label": -1}) + "\n")
    args = ["--adapter", str(moved), "--input", str(rows), "--output", str(tmp_path / "out.jsonl")]
    predict_command.main([*args, "--batch_size", "8", "--t5", HUB_ID])
    assert json.loads((tmp_path / "out.jsonl").read_text())["task"] == "boolq"
    other = tmp_path / "other_t5"
    shutil.copytree(snapshot, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    with pytest.raises(SystemExit) as stop:
        predict_command.main([*args, "--t5", str(other)])
    assert stop.value.code == 2
    assert re.search(r"trained with a t5 of sha256 \w{12}, .*other_t5 has \w{12}", capsys.readouterr().err)


def test_peft_prompt_tuning_gives_our_logits_and_predictions(hub, prompt_tuning):
    _, snapshot = hub
    config, _, adapter = prompt_tuning
    peft_config = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == HUB_ID and peft_config["revision"] == REVISION
    base = transformers.T5ForConditionalGeneration.from_pretrained(snapshot)
    model = peft.PeftModel.from_pretrained(base, adapter).eval()
    assert isinstance(model.peft_config["default"], peft.PromptTuningConfig)
    ours = load_adapter(adapter)
    np.testing.assert_array_equal(
        model.prompt_encoder["default"].embedding.weight.detach().numpy(), ours.params["prompt"]
    )

    # The validation rows of boolq as our serving tokenises them, padded (the mask matters: rows differ in length).
    predictor = predict.Predictor([ours], batch_size=8)
    rows = [{"task": "boolq", **r} for r in _raw_rows("boolq")][:16]
    lengths = config.sequence_length.to_dict()
    _, _, features = predict.TaskPipeline("boolq", lengths, lengths)(rows)
    input_ids = torch.tensor(features["encoder_input_tokens"], dtype=torch.long)
    mask = torch.tensor(features["encoder_input_mask"], dtype=torch.long)
    assert (mask == 0).any()
    decoder_ids = torch.tensor(features["decoder_input_tokens"], dtype=torch.long)
    with torch.no_grad():
        theirs = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits.numpy()
    t5 = hf.load_t5(snapshot)
    prompt = jnp.broadcast_to(ours.params["prompt"], (len(rows), *ours.params["prompt"].shape))
    logits = t5(input_ids.numpy(), decoder_ids.numpy(), attention_mask=mask.numpy(), prompt_embeds=prompt)
    np.testing.assert_allclose(np.asarray(logits), theirs, atol=2e-5, rtol=1e-4)

    # Greedy generation by PEFT gives our served texts, token for token.
    max_len = config.eval.max_decode_len
    with torch.no_grad():
        generated = model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=max_len, num_beams=1, do_sample=False
        )
    vocabulary = seqio.SentencePieceVocabulary(str(snapshot / "spiece.model"))
    texts = [vocabulary.decode(row[1:].tolist()) for row in generated.numpy()]  # Decoder start dropped.
    assert any(texts) and texts == [out["text"] for out in predictor.predict(rows)]


def _raw_rows(task: str) -> list[dict]:
    """The validation rows of `task` as its data file holds them."""
    source = seqio.get_mixture_or_task("sharpt_" + task).source.get_dataset("validation")
    return [
        {k: v.decode() if isinstance(v, bytes) else v.item() for k, v in row.items() if k != "is_train"}
        for row in source.as_numpy_iterator()
    ]


def _first_losses(workdir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # Three tiny runs: about a minute.
def test_target_from_an_exported_source_adapter(hub, tmp_path):
    """A target run started from the source run's exported adapter logs the losses of one started from the run."""
    assets, _ = hub
    source = hub_config(assets, task="rte,sst2", num_train_steps=2, save_every=2)
    train.train(source, tmp_path / "source")
    adapter = export.export(tmp_path / "source", tmp_path / "source_adapter", step=2)
    losses = {}
    for name, start in (("from_run", tmp_path / "source"), ("from_adapter", adapter)):
        steps = dict(num_train_steps=2, save_every=2, log_every=1)
        target = hub_config(assets, stage="target", task="cb", source_checkpoint=str(start), **steps)
        train.train(target, tmp_path / name)
        losses[name] = _first_losses(tmp_path / name)
    assert len(losses["from_run"]) == 2 and losses["from_adapter"] == losses["from_run"]
    metadata = json.loads((tmp_path / "from_adapter" / "checkpoints" / "2" / "metadata" / "metadata").read_text())
    assert metadata["source"] == {"workdir": str(adapter.absolute()), "step": 2}

    # The frozen-models check applies to adapters too, and a target-stage adapter is no source.
    other = tmp_path / "other_encoder"
    shutil.copytree(assets["encoder"], other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    wrong = hub_config(assets, stage="target", task="cb", source_checkpoint=str(adapter), encoder=str(other))
    with pytest.raises(build.ConfigError, match=f"{adapter} was trained with encoder .*; set --config.encoder"):
        train.train(wrong, tmp_path / "wrong")
    target_adapter = export.export(tmp_path / "from_run", tmp_path / "target_adapter", step=2)
    again = hub_config(assets, stage="target", task="cb", source_checkpoint=str(target_adapter))
    with pytest.raises(build.ConfigError, match="is a sharpt target-stage run, not a sharpt source-stage run"):
        train.train(again, tmp_path / "again")


@pytest.mark.parametrize("command", ["predict", "export", "report"])
def test_help_is_quick_and_imports_neither_tensorflow_nor_jax(command, tmp_path):
    """`python -m sharpt_jax.<command> --help` from another folder parses its arguments before the heavy imports."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # As `pip install -e .` makes the packages importable.
    cmd = [sys.executable, "-X", "importtime", "-m", f"sharpt_jax.{command}", "--help"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ")
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "sharpt_jax" in imported and not imported & {"tensorflow", "jax", "seqio", "torch"}


@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"task": "x", "inputs": "a"}', '{"task": "x", "inputs": }'], "rows.jsonl:2: not valid JSON"),
        (['["task", "x"]'], "rows.jsonl:1: a list, expected a JSON object"),
        (None, "rows.jsonl: no such file"),
    ],
)
def test_predict_names_a_bad_input_line_before_loading_models(lines, message, tmp_path):
    """A mistake in --input is one line and exit 2, found before the adapter (here a missing one) is read."""
    rows = tmp_path / "rows.jsonl"
    if lines is not None:
        rows.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "sharpt_jax.predict", "--adapter", str(tmp_path / "none"), "--input", str(rows)]
    proc = subprocess.run([*cmd, "--output", str(tmp_path / "out.jsonl")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr.splitlines()[-1]
