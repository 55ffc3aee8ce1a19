"""Adapters and mixed-task serving: export -> load round trip, checksum refusals, and mixed batches of rows of
four tasks and three adapters (SharPT source and target stage, PromptTuning) that give exactly the evaluator's
predictions, in input order, from the Python API and from the command line."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import seqio
from tiny_run import make_assets, tiny_config

from sharpt_jax import build, checkpoints, evaluate, train
from sharpt_jax import export as export_command
from sharpt_jax import predict as predict_command
from sharpt_jax import scoring as sharpt_scoring
from sharpt_jax.serving import export, predict
from sharpt_jax.serving.export import AdapterError, load_adapter

ROOT = Path(__file__).resolve().parents[1]
RUN_OF = {"rte": "source", "sst2": "source", "cb": "cb", "boolq": "boolq"}  # Task -> its run.


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (config, workdir)} of three scored tiny runs: a SharPT source run on rte+sst2, a SharPT target
    run on cb from it, and a PromptTuning run on boolq (4 steps each, one checkpoint)."""
    assets = make_assets(tmp_path_factory.mktemp("assets"))
    root = tmp_path_factory.mktemp("runs")
    base = dict(num_train_steps=4, save_every=4, eval_every=0)
    configs = {
        "source": tiny_config(assets, task="rte,sst2", **base),
        "cb": tiny_config(assets, stage="target", task="cb", source_checkpoint=str(root / "source"), **base),
        "boolq": tiny_config(assets, stage="target", task="boolq", method="prompt_tuning", **base),
    }
    for name, config in configs.items():
        config.eval.splits = ("validation",)
        train.train(config, root / name)
        evaluate.evaluate_checkpoints(config, root / name)
    return {name: (config, root / name) for name, config in configs.items()}


@pytest.fixture(scope="module")
def adapters(runs, tmp_path_factory):
    """{name: adapter folder} of every run's best checkpoint."""
    out = tmp_path_factory.mktemp("adapters")
    return {name: export.export(workdir, out / name) for name, (_, workdir) in runs.items()}


def _checkpoint_params(workdir: Path, step: int) -> dict[str, np.ndarray]:
    """The trainable parameters saved in checkpoint `step`, {"generator/w1/kernel": array}."""
    restored = ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "params")
    return {
        "/".join(str(k.key) for k in path if k.key != "value"): np.asarray(value)
        for path, value in jax.tree_util.tree_leaves_with_path(restored)
    }


def test_round_trip(runs, adapters):
    source = _checkpoint_params(runs["source"][1], 4)
    cb = load_adapter(adapters["cb"])
    # The target run's generator from its checkpoint, its codebook from the source run's: bit for bit.
    assert sorted(cb.params) == sorted(source)
    for name, value in _checkpoint_params(runs["cb"][1], 4).items():
        np.testing.assert_array_equal(cb.params[name], value)
    np.testing.assert_array_equal(cb.params["codebook/embeddings"], source["codebook/embeddings"])
    boolq = load_adapter(adapters["boolq"])
    assert list(boolq.params) == ["prompt"]
    np.testing.assert_array_equal(boolq.params["prompt"], _checkpoint_params(runs["boolq"][1], 4)["prompt"])

    config, workdir = runs["cb"]
    metadata = json.loads((workdir / "checkpoints" / "4" / "metadata" / "metadata").read_text())
    best = json.loads((workdir / "eval" / "best.json").read_text())
    assert (cb.method, cb.config["stage"], cb.tasks) == ("sharpt", "target", ["cb"])
    for part in ("t5", "encoder"):
        assert cb.config[part]["checksum"] == metadata["identity"][part]["checksum"]
    assert cb.config["sequence_length"] == config.sequence_length.to_dict()
    assert cb.config["eval"] == {"scoring": "decode", "max_decode_len": config.eval.max_decode_len}
    assert cb.config["scores"]["validation"] == best["validation"]
    assert cb.config["scores"]["protocol"] == best["protocol"]
    card = (adapters["cb"] / "README.md").read_text()
    assert f"| validation | accuracy | {best['validation']['accuracy']:.2f} |" in card
    assert best["protocol"]["split_protocol"] in card
    assert load_adapter(adapters["source"]).tasks == ["rte", "sst2"]


def test_checksum_mismatch_and_model_tuning_refused(runs, adapters, tmp_path):
    other = tmp_path / "other_encoder"
    shutil.copytree(runs["cb"][0].encoder, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")  # Same model, new bytes.
    with pytest.raises(AdapterError, match=r"trained with a encoder of sha256 \w{12}, .*other_encoder has \w{12}"):
        load_adapter(adapters["cb"], encoder=other)
    # A random T5 is checked where it is built.
    forged = tmp_path / "forged"
    shutil.copytree(adapters["cb"], forged)
    adapter_config = json.loads((forged / "adapter.json").read_text())
    adapter_config["t5"]["checksum"] = "0" * 64
    (forged / "adapter.json").write_text(json.dumps(adapter_config))
    with pytest.raises(AdapterError, match=r"trained with t5 random \(sha256 000000000000\), here it is random"):
        predict.Predictor([load_adapter(forged)], batch_size=16)

    run = tmp_path / "model_tuning_run"
    (run / "checkpoints").mkdir(parents=True)
    config = runs["cb"][0].copy_and_resolve_references()
    config.method = "model_tuning"
    (run / "config.json").write_text(config.to_json())
    with pytest.raises(AdapterError, match="model_tuning run: it trains the whole T5"):
        export.export(run, tmp_path / "out")


def _raw_rows(task: str) -> list[dict]:
    """The validation rows of `task` as its data file holds them, {"task": task, ...raw fields}."""

    def plain(value):
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value.tolist()]
        return value.item() if isinstance(value, np.generic) else value

    source = seqio.get_mixture_or_task("sharpt_" + task).source.get_dataset("validation")
    return [
        {"task": task, **{k: plain(v) for k, v in r.items() if k != "is_train"}} for r in source.as_numpy_iterator()
    ]


def _evaluator_texts(workdir: Path, task: str) -> list[str]:
    """The texts the evaluator predicted for the validation split of `task` at its run's best step."""
    step = json.loads((workdir / "eval" / "best.json").read_text())["step"]
    lines = (workdir / "eval" / "predictions" / str(step) / "validation.jsonl").read_text().splitlines()
    return [row["prediction"] for row in map(json.loads, lines) if row["task"] == task]


@pytest.fixture(scope="module")
def predictor(adapters):
    return predict.Predictor([load_adapter(adapters[name]) for name in ("source", "cb", "boolq")], batch_size=16)


@pytest.fixture(scope="module")
def mixed(runs, predictor):
    """(rows of the four tasks' validation splits shuffled together, the evaluator's text of each row)."""
    rows, texts = [], []
    for task, run in RUN_OF.items():
        task_rows, task_texts = _raw_rows(task), _evaluator_texts(runs[run][1], task)
        assert len(task_rows) == len(task_texts)
        rows += task_rows
        texts += task_texts
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    return [rows[i] for i in order], [texts[i] for i in order]


@pytest.fixture(scope="module")
def cb_model(runs, predictor):
    """score_split of the cb run's checkpoint: split -> scoring -> SplitScore, computed when first asked."""
    config, workdir = runs["cb"]
    ckpts = checkpoints.Checkpoints(workdir)
    model = build.RunModel(config, build.prepare(config, mesh=predictor.mesh), ckpts).at(4)
    ckpts.close()
    lengths, eval_config = config.sequence_length.to_dict(), config.eval
    return lambda scoring: sharpt_scoring.score_split(
        model,
        "cb",
        "validation",
        sequence_length=lengths,
        batch_size=eval_config.batch_size,
        max_decode_len=eval_config.max_decode_len,
        mesh=predictor.mesh,
        scoring=scoring,
    )


def test_mixed_predictions_equal_the_evaluators(predictor, mixed, cb_model, adapters):
    rows, texts = mixed
    outputs = predictor.predict(rows)
    assert [out["task"] for out in outputs] == [row["task"] for row in rows]  # Input order.
    assert [out["text"] for out in outputs] == texts
    # The postprocessed predictions and skills of one task, against a fresh score_split of its checkpoint.
    scored = cb_model("decode")
    cb = [out for out in outputs if out["task"] == "cb"]
    assert [out["prediction"] for out in cb] == scored.predictions
    # The skill is a hard argmin: in mixed batches (other rows, other padding) the instance embedding moves by float
    # rounding, which may pick the other of two near-equal vectors (this tiny random encoder's codebook vectors lie
    # within 1e-4 of one another relative to their norm). Any other difference is a bug.
    book = np.asarray(load_adapter(adapters["cb"]).params["codebook/embeddings"])
    for served, evaluated in zip([out["skill"] for out in cb], scored.skills.tolist(), strict=True):
        gap = ((book[served] - book[evaluated]) ** 2).sum() / (book[evaluated] ** 2).sum()
        assert served == evaluated or gap < 1e-3, (served, evaluated, gap)
    assert all("skill" not in out for out in outputs if out["task"] == "boolq")  # PromptTuning has none.


def test_rank_classification(adapters, cb_model, tmp_path):
    """An adapter of a run scored by rank classification ranks the labels of closed-label tasks as it did."""
    ranked = tmp_path / "cb_ranked"
    shutil.copytree(adapters["cb"], ranked)
    adapter_config = json.loads((ranked / "adapter.json").read_text())
    adapter_config["eval"]["scoring"] = "rank_classification"
    (ranked / "adapter.json").write_text(json.dumps(adapter_config))
    outputs = predict.Predictor([load_adapter(ranked)], batch_size=16).predict(_raw_rows("cb"))
    scored = cb_model("rank_classification")
    assert [out["text"] for out in outputs] == scored.texts
    assert [out["prediction"] for out in outputs] == scored.predictions
    assert [out["skill"] for out in outputs] == scored.skills.tolist()


def test_row_errors(predictor):
    row = {"task": "cb", "premise": "p", "hypothesis": "h", "label": -1}
    assert predictor.predict([row])[0]["task"] == "cb"  # A hidden label (-1) is an unlabelled row.
    cases = [
        ({"premise": "p"}, 'no "task" field'),
        ({**row, "task": "nope"}, "unknown task 'nope'"),
        ({**row, "task": "wic"}, "no adapter serves task wic; the adapters serve rte, sst2, cb, boolq"),
        ({"task": "cb", "premise": "p"}, "row 1 \\(cb\\): missing field\\(s\\) hypothesis, label"),
    ]
    for bad, message in cases:
        with pytest.raises(AdapterError, match=message):
            predictor.predict([row, bad])
    with pytest.raises(AdapterError, match="task cb is served by two adapters"):
        predict.Predictor([predictor.adapters[1], predictor.adapters[1]])


def test_command_lines(runs, adapters, mixed, tmp_path, capsys):
    export_command.main(["--workdir", str(runs["boolq"][1]), "--out", str(tmp_path / "boolq")])
    assert load_adapter(tmp_path / "boolq").params.keys() == load_adapter(adapters["boolq"]).params.keys()
    rows, texts = mixed
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    cmd = [sys.executable, "-m", "sharpt_jax.predict", "--input", str(tmp_path / "rows.jsonl")]
    cmd += ["--output", str(tmp_path / "preds.jsonl"), "--batch_size", "16"]
    for name in ("source", "cb"):
        cmd += ["--adapter", str(adapters[name])]
    cmd += ["--adapter", str(tmp_path / "boolq")]
    proc = subprocess.run(cmd, cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    outputs = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert [out["text"] for out in outputs] == texts[:20]
    # A mistake ends the command with one line.
    with pytest.raises(SystemExit) as stop:
        predict_command.main([*cmd[3:-2], "--adapter", str(tmp_path)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: not an adapter folder")
