"""Source -> target -> eval-only through the demo's stages on tiny configs: the files DESIGN.md promises."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
from tiny_run import make_assets, tiny_config

from configs import command_line
from configs import demo as demo_config
from sharpt_jax import build, checkpoints, evaluate, scoring
from sharpt_jax.experiments import demo, skills_premise
from tasks import sources


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A finished tiny demo: source on sst2+rte (8 steps), then target cb (8 steps), each scored."""
    assets = make_assets(tmp_path_factory.mktemp("assets"))
    config = tiny_config(assets, mode="demo", eval_every=8)
    config.demo.update(source_tasks="sst2,rte", targets="cb", source_steps=8, target_steps=8)
    workdir = tmp_path_factory.mktemp("demo")
    rows = demo.run(config, workdir)
    return config, workdir, rows


def test_results_files(pipeline):
    config, workdir, _ = pipeline
    for stage, tasks, steps in (("source", ("sst2", "rte"), ["8"]), ("cb", ("cb",), ["4", "8"])):
        results = json.loads((workdir / stage / "eval" / "results.json").read_text())
        assert results["protocol"] == {"scoring": "decode", "split_protocol": sources.SPLIT_PROTOCOL}
        by_step = {k: v for k, v in results.items() if k != "protocol"}
        assert sorted(by_step, key=int) == steps  # Every checkpoint, keyed by step (the source saves its last).
        best = json.loads((workdir / stage / "eval" / "best.json").read_text())
        for step, splits in by_step.items():
            # Test only at the best validation step.
            assert set(splits) == ({"validation", "test"} if int(step) == best["step"] else {"validation"})
            for split in splits.values():
                if len(tasks) == 1:
                    assert {"macro_f1", "accuracy"} <= set(split)  # cb: mean class F1 and accuracy.
                else:
                    assert {f"{t}/accuracy" for t in tasks} <= set(split)
                metrics = [v for k, v in split.items() if k != "score"]
                assert all(0.0 <= v <= 100.0 for v in metrics)
        scores = {int(s): r["validation"]["score"] for s, r in by_step.items()}
        assert best["step"] == max(sorted(scores), key=lambda s: scores[s])
        assert best["validation"] == by_step[str(best["step"])]["validation"]
        assert best["test"] == by_step[str(best["step"])]["test"]
        assert best["protocol"] == results["protocol"]
        skills = json.loads((workdir / stage / "eval" / "skills.json").read_text())
        counts = skills[str(best["step"])]["test"]
        assert sorted(counts) == sorted(tasks)
        assert all(len(c) == config.num_skills for c in counts.values())
        assert (workdir / stage / "metrics.jsonl").exists()
        for split in ("validation", "test"):
            lines = (workdir / stage / "eval" / "predictions" / str(best["step"]) / f"{split}.jsonl").read_text()
            rows = [json.loads(line) for line in lines.splitlines()]
            assert {r["task"] for r in rows} == set(tasks)
            assert all(set(r) == {"task", "inputs", "target", "prediction", "skill"} for r in rows)
            for task in tasks:
                mine = [r for r in rows if r["task"] == task]
                expected = [ex["inputs_pretokenized"].decode() for ex in _examples(task, split)]
                assert [r["inputs"] for r in mine] == expected
                if split == "test":
                    assert len(mine) == sum(counts[task])
    assert checkpoints.Checkpoints(workdir / "cb").metadata(8)["source"]["step"] == 8


def _examples(task: str, split: str) -> list[dict]:
    ds = seqio.get_mixture_or_task("sharpt_" + task).get_dataset(None, split=split, shuffle=False, num_epochs=1)
    return list(ds.as_numpy_iterator())


def test_validation_during_training_equals_the_eval_mode(pipeline):
    _, workdir, _ = pipeline
    for stage in ("source", "cb"):
        last = json.loads((workdir / stage / "metrics.jsonl").read_text().splitlines()[-1])
        results = json.loads((workdir / stage / "eval" / "results.json").read_text())
        validation = results["8"]["validation"]
        assert last["step"] == 8 and "loss" in last
        assert {k.removeprefix("eval/validation/"): v for k, v in last.items() if k.startswith("eval/")} == validation


def test_cb_score_is_the_mean_of_its_metrics(pipeline):
    _, workdir, _ = pipeline
    results = json.loads((workdir / "cb" / "eval" / "results.json").read_text())
    for step in (v for k, v in results.items() if k != "protocol"):
        split = step["validation"]
        assert split["score"] == pytest.approx(np.mean([split["macro_f1"], split["accuracy"]]))


def test_table_and_heatmap(pipeline):
    _, workdir, rows = pipeline
    assert {(r["stage"], r["task"]) for r in rows} == {("source", "sst2"), ("source", "rte"), ("cb", "cb")}
    assert json.loads((workdir / "results.json").read_text()) == rows
    assert (workdir / "skills.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Step 0 for the target run from the source only; routing only on a skills-world target.
    (cb,) = [r for r in rows if r["stage"] == "cb"]
    assert cb["step0"] == json.loads((workdir / "cb" / "step0.json").read_text())["test"]
    assert 0.0 <= cb["step0"] <= 100.0 and cb["routing"] is None
    assert all(r["step0"] is None and r["routing"] is None for r in rows if r["stage"] == "source")
    table = demo.format_table(rows).splitlines()
    assert table[0].split(" | ")[5:] == ["step 0", "test", "majority target", "routing |"]
    assert table[-1].endswith(f"| {cb['step0']:.1f} | {cb['test']:.1f} | {cb['majority']:.1f} | - |")


def test_step0_of_a_source_task_is_the_source_runs_score(pipeline, tmp_path):
    """A source's own task as a target (source replay): before any target step, the model restored from the source
    run scores what the source run's evaluator scored on that task at the same checkpoint."""
    config, workdir, _ = pipeline
    stage = demo.stage_config(config, "target", "rte", 8, workdir / "source")
    step0 = demo.step0(stage, tmp_path, "accuracy")
    best = json.loads((workdir / "source" / "eval" / "best.json").read_text())
    assert step0["test"] == best["test"]["rte/accuracy"] and step0["routing"] is None
    assert json.loads((tmp_path / "step0.json").read_text()) == step0


def test_step0_is_computed_once(pipeline, monkeypatch):
    config, workdir, rows = pipeline
    monkeypatch.setattr(skills_premise, "transferred", lambda *a: pytest.fail("step 0 computed again"))
    stage = demo.stage_config(config, "target", "cb", 8, workdir / "source")
    (cb,) = [r for r in rows if r["stage"] == "cb"]
    assert demo.step0(stage, workdir / "cb", cb["metric"])["test"] == cb["step0"]


@pytest.mark.slow
def test_skills_demo_step0_and_routing_of_a_source_replay(tmp_path):
    """The demo on the skills world, tiny, with the reverse source's own task as its target: at step 0 the target
    scores the source run's reverse test score, and its routing is the share of reverse test instances that chose,
    in the source run, the vector they choose most."""
    config = demo_config.get_config()
    config.demo.update(source_steps=4, target_steps=2, baselines="", targets="skills:reverse@16")
    config.update(save_every=2, log_every=2)
    config.eval.batch_size = 40  # Divisible by the 8 test devices.
    rows = demo.run(config, tmp_path)
    (row,) = [r for r in rows if r["stage"] == "skills_reverse_n16"]
    best = json.loads((tmp_path / "source" / "eval" / "best.json").read_text())
    counts = json.loads((tmp_path / "source" / "eval" / "skills.json").read_text())[str(best["step"])]["test"]
    assert row["step0"] == best["test"]["skills_reverse/exact_match"]
    assert row["routing"] == max(counts["skills_reverse"]) / sum(counts["skills_reverse"])


def test_eval_mode_twice_scores_nothing_twice(pipeline, monkeypatch):
    config, workdir, _ = pipeline
    calls = []
    real = scoring.score_split
    monkeypatch.setattr(scoring, "score_split", lambda *a, **k: calls.append((a[1], a[2])) or real(*a, **k))
    stage = demo.stage_config(config, "target", "cb", 8, workdir / "source")
    before = (workdir / "cb" / "eval" / "results.json").read_text()
    best = evaluate.evaluate_checkpoints(stage, workdir / "cb")
    assert calls == []
    assert (workdir / "cb" / "eval" / "results.json").read_text() == before
    assert best == json.loads((workdir / "cb" / "eval" / "best.json").read_text())
    # A checkpoint added later is the only one scored, on validation only.
    results = json.loads(before)
    other = "4" if best["step"] == 8 else "8"
    del results[other]
    (workdir / "cb" / "eval" / "results.json").write_text(json.dumps(results))
    evaluate.evaluate_checkpoints(stage, workdir / "cb")
    assert calls == [("sharpt_cb", "validation")]
    assert json.loads((workdir / "cb" / "eval" / "results.json").read_text()) == json.loads(before)


def test_another_protocol_is_refused(pipeline):
    config, workdir, _ = pipeline
    stage = demo.stage_config(config, "target", "cb", 8, workdir / "source")
    stage.eval.scoring = "rank_classification"
    with pytest.raises(build.ConfigError, match="made with .*'scoring': 'decode'.* uses .*rank_classification"):
        evaluate.evaluate_checkpoints(stage, workdir / "cb")


def test_eval_mode_scores_with_the_runs_config_json(pipeline):
    """run.py's eval mode without --config: the config comes from cb's config.json and scores as the demo did."""
    _, workdir, _ = pipeline
    before = (workdir / "cb" / "eval" / "results.json").read_text()
    results = json.loads(before)
    best_step = json.loads((workdir / "cb" / "eval" / "best.json").read_text())["step"]
    del results["4" if best_step == 8 else "8"]  # One checkpoint to score again, through config.json's config.
    (workdir / "cb" / "eval" / "results.json").write_text(json.dumps(results))
    _, overrides = command_line.split_argv(["run.py", "--config.mode=eval"])
    config = command_line.load(None, overrides, str(workdir / "cb"))
    assert (config.task, config.stage, config.t5) == ("cb", "target", "random")
    evaluate.evaluate_checkpoints(config, workdir / "cb")
    assert json.loads((workdir / "cb" / "eval" / "results.json").read_text()) == json.loads(before)


def tensorboard_scalars(folder) -> dict[tuple[int, str], float]:
    """{(step, tag): value} of every scalar in the TensorBoard event files of `folder`."""
    scalars = {}
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars[event.step, value.tag] = float(tf.make_ndarray(value.tensor))
    return scalars


def test_eval_scores_reach_tensorboard(pipeline):
    """Every score of eval/results.json is in the run's TensorBoard folder as eval/<split>/<metric> at its step
    (the test split and step 4 only the eval mode writes; training scores validation at step 8)."""
    _, workdir, _ = pipeline
    results = json.loads((workdir / "cb" / "eval" / "results.json").read_text())
    expected = {
        (int(step), f"eval/{split}/{name}"): value
        for step, splits in results.items()
        if step != "protocol"
        for split, metrics in splits.items()
        for name, value in metrics.items()
    }
    assert {(4, "eval/validation/score"), (8, "eval/validation/macro_f1")} <= set(expected)
    assert any(tag.startswith("eval/test/") for _, tag in expected)
    scalars = tensorboard_scalars(workdir / "cb" / "tensorboard")
    assert {key: scalars.get(key) for key in expected} == pytest.approx(expected, rel=1e-6)
    assert (8, "loss") in scalars  # Beside the training's scalars.
