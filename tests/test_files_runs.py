"""File-backed tasks end to end (slow): the example folder trained (PromptTuning, SharPT's source stage on a
mixture of folders and its target stage on one), scored, reported, exported and served from rows with only the
input field; a changed file refused on resume; and a skills-world target written as files training exactly as
the registered task."""

import json
from pathlib import Path

import pytest
from test_files import SENTIMENT, jsonl, write_folder
from tiny_run import make_assets, tiny_config

from configs import skills as skills_config
from sharpt_jax import build, evaluate, train
from sharpt_jax.experiments import paper_report
from sharpt_jax.serving import export, predict
from tasks import skills_world

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sentiment"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_example_trains_scores_exports_and_serves(tmp_path):
    assets = make_assets(tmp_path / "assets")
    runs = tmp_path / "runs"
    config = tiny_config(
        assets, task=f"files:{EXAMPLE}", method="prompt_tuning", stage="target", num_train_steps=4, save_every=2
    )
    config.eval.scoring = "rank_classification"
    train.train(config, runs / "sentiment")
    best = evaluate.evaluate_checkpoints(config, runs / "sentiment")
    assert set(best["test"]) == {"accuracy", "score"}
    assert "the train, validation and test files as given" in best["protocol"]["split_protocol"]
    scored = _lines(runs / "sentiment" / "eval" / "predictions" / str(best["step"]) / "test.jsonl")
    assert [row["inputs"] for row in scored][:1] == [
        "review: " + (EXAMPLE / "test.csv").read_text().split("\n")[1].split(",")[0]
    ]

    adapter = export.export(runs / "sentiment", tmp_path / "adapter")
    recorded = json.loads((adapter / "adapter.json").read_text())
    (task,) = recorded["tasks"]
    assert recorded["task_specs"][task] == {
        "folder": str(EXAMPLE),
        **SENTIMENT,
        "metric": "accuracy",
        "validation_fraction": 0.1,
    }
    # Served from rows with only the input field (no task, no label): the evaluator's predictions.
    texts = [line.split(",")[0].strip('"') for line in (EXAMPLE / "test.csv").read_text().splitlines()[1:]]
    served = predict.Predictor([export.load_adapter(adapter)], batch_size=8).predict([{"text": t} for t in texts])
    assert [out["text"] for out in served] == [row["prediction"] for row in scored]
    assert {out["task"] for out in served} == {task}

    # SharPT's source stage on two folders (JSONL + CSV) and the report over both runs.
    other = write_folder(
        tmp_path / "topics",
        {"input": "title: {title}", "target": "topic", "labels": ["sport", "music"], "metric": "macro_f1"},
        train_csv="title,topic\n" + "".join(f"match {i},sport\nsong {i},1\n" for i in range(10)),
        test_csv="title,topic\ngoal,0\nguitar,1\n",
    )
    mix = tiny_config(assets, task=f"files:{EXAMPLE},files:{other}", num_train_steps=4, save_every=4)
    mix.eval.splits = ("validation", "test")
    train.train(mix, runs / "source")
    best = evaluate.evaluate_checkpoints(mix, runs / "source")
    assert any(key.endswith("/macro_f1") for key in best["test"])
    target = tiny_config(
        assets,
        stage="target",
        task=f"files:{other}",
        source_checkpoint=str(runs / "source"),
        num_train_steps=2,
        save_every=2,
    )
    train.train(target, runs / "topics")
    assert set(evaluate.evaluate_checkpoints(target, runs / "topics")["test"]) == {"macro_f1", "score"}
    written = paper_report.write(runs, tmp_path / "report")
    assert (tmp_path / "report" / "results.md") in written

    # A changed file is refused on resume, with one line.
    with open(other / "train.csv", "a") as f:
        f.write("drums,music\n")
    mix.num_train_steps = 8
    with pytest.raises(build.ConfigError, match=rf"the data file {other}/train.csv changed since the run started"):
        train.train(mix, runs / "source")


@pytest.mark.slow
def test_skills_target_as_files_trains_and_scores_like_the_registered_task(tmp_path):
    """The rows of sharpt_skills_swap_n16 written as files (input = its inputs, target = its targets, exact match):
    SharPT's source stage on each gives the same losses at every step and the same scores and predictions (the
    one checkpoint, so both runs score the same step)."""
    swap, folder = skills_world.TASKS["swap"], tmp_path / "swap"
    splits = {"train_jsonl": 16, "validation_jsonl": None, "test_jsonl": None}
    write_folder(
        folder,
        {"input": "inputs", "target": "targets", "metric": "exact_match"},
        **{name: jsonl(*swap.examples(name.split("_")[0], n)) for name, n in splits.items()},
    )
    runs = {}
    for name, task in (("registered", "skills_swap_n16"), ("files", f"files:{folder}")):
        config = build.run_config(
            skills_config.get_config("quick"),
            task=task,
            method="sharpt",
            stage="source",
            num_train_steps=4,
            save_every=4,
            log_every=1,
            warmup_steps=1,
            learning_rate=0.01,
        )
        config.eval.splits = ("validation", "test")
        train.train(config, tmp_path / name)
        evaluate.evaluate_checkpoints(config, tmp_path / name)
        runs[name] = tmp_path / name
    losses = {
        name: [(m["step"], m["loss"], m["lm_loss"]) for m in _lines(run / "metrics.jsonl")]
        for name, run in runs.items()
    }
    assert len(losses["files"]) == 4 and losses["files"] == losses["registered"]
    results = {name: json.loads((run / "eval" / "results.json").read_text())["4"] for name, run in runs.items()}
    for split in ("validation", "test"):
        assert results["files"][split]["exact_match"] == results["registered"][split]["exact_match"]
        predictions = {
            name: [
                (row["inputs"], row["target"], row["prediction"])
                for row in _lines(run / "eval" / "predictions" / "4" / f"{split}.jsonl")
            ]
            for name, run in runs.items()
        }
        assert len(predictions["files"]) == {"validation": 100, "test": 200}[split]
        assert predictions["files"] == predictions["registered"]
