"""Source -> target -> eval-only through the demo's stages on tiny configs: the files DESIGN.md promises."""

import json

import numpy as np
import pytest
from tiny_run import make_assets, tiny_config

from sharpt_jax import checkpoints, demo, evaluate


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
        assert sorted(results, key=int) == steps  # Every checkpoint, keyed by step (the source saves its last).
        for step in results.values():
            assert set(step) == {"validation", "test"}
            for split in step.values():
                if len(tasks) == 1:
                    assert {"macro_f1", "accuracy"} <= set(split)  # cb: mean class F1 and accuracy.
                else:
                    assert {f"{t}/accuracy" for t in tasks} <= set(split)
                metrics = [v for k, v in split.items() if k != "score"]
                assert all(0.0 <= v <= 100.0 for v in metrics)
        best = json.loads((workdir / stage / "eval" / "best.json").read_text())
        scores = {int(s): r["validation"]["score"] for s, r in results.items()}
        assert best["step"] == max(sorted(scores), key=lambda s: scores[s])
        assert best["validation"] == results[str(best["step"])]["validation"]
        assert best["test"] == results[str(best["step"])]["test"]
        skills = json.loads((workdir / stage / "eval" / "skills.json").read_text())
        counts = skills[str(best["step"])]["test"]
        assert sorted(counts) == sorted(tasks)
        assert all(len(c) == config.num_skills for c in counts.values())
        assert (workdir / stage / "metrics.jsonl").exists()
    assert checkpoints.Checkpoints(workdir / "cb").metadata(8)["source"]["step"] == 8


def test_validation_during_training_equals_the_eval_mode(pipeline):
    _, workdir, _ = pipeline
    for stage in ("source", "cb"):
        last = json.loads((workdir / stage / "metrics.jsonl").read_text().splitlines()[-1])
        validation = json.loads((workdir / stage / "eval" / "results.json").read_text())["8"]["validation"]
        assert last["step"] == 8 and "loss" in last
        assert {k.removeprefix("eval/validation/"): v for k, v in last.items() if k.startswith("eval/")} == validation


def test_cb_score_is_the_mean_of_its_metrics(pipeline):
    _, workdir, _ = pipeline
    for step in json.loads((workdir / "cb" / "eval" / "results.json").read_text()).values():
        split = step["test"]
        assert split["score"] == pytest.approx(np.mean([split["macro_f1"], split["accuracy"]]))


def test_table_and_heatmap(pipeline):
    _, workdir, rows = pipeline
    assert {(r["stage"], r["task"]) for r in rows} == {("source", "sst2"), ("source", "rte"), ("cb", "cb")}
    assert json.loads((workdir / "results.json").read_text()) == rows
    assert (workdir / "skills.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_mode_twice_scores_nothing_twice(pipeline, monkeypatch):
    config, workdir, _ = pipeline
    calls = []
    real = evaluate.score_split
    monkeypatch.setattr(evaluate, "score_split", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    stage = demo.stage_config(config, "target", "cb", 8, workdir / "source")
    before = (workdir / "cb" / "eval" / "results.json").read_text()
    best = evaluate.evaluate_checkpoints(stage, workdir / "cb")
    assert calls == []
    assert (workdir / "cb" / "eval" / "results.json").read_text() == before
    assert best == json.loads((workdir / "cb" / "eval" / "best.json").read_text())
    # A checkpoint added later is the only one scored.
    results = json.loads(before)
    del results["4"]
    (workdir / "cb" / "eval" / "results.json").write_text(json.dumps(results))
    evaluate.evaluate_checkpoints(stage, workdir / "cb")
    assert calls == ["sharpt_cb", "sharpt_cb"]  # validation and test of step 4 only.
    assert json.loads((workdir / "cb" / "eval" / "results.json").read_text()) == json.loads(before)
