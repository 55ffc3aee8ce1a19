"""The premise test (sharpt_jax/experiments/skills_premise.py, skills_stats.py): paired statistics against SciPy, the
pre-registered predictions on made-up records, and (slow) a tiny run of the whole experiment through the real
trainer and evaluator."""

import json

import numpy as np
import pytest
from scipy import stats

from configs import skills as skills_config
from sharpt_jax.experiments import skills_stats
from tasks import skills_world

SEEDS = (0, 1, 2, 3, 4)


def test_paired_interval_is_scipys_paired_t_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(60, 10, 5), rng.normal(50, 10, 5)
    ours = skills_stats.paired(dict(enumerate(a)), {**dict(enumerate(b)), 7: 0.0})  # Seed 7: only in b.
    reference = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert ours["seeds"] == 5 and ours["mean"] == pytest.approx(np.mean(a - b))
    assert (ours["low"], ours["high"]) == pytest.approx((reference.low, reference.high))


def record(target, method, size, test, seed, stratum="A", routing=1.0):
    return dict(target=target, method=method, num_train=size, test=test, seed=seed, stratum=stratum,
                routing=routing, selected=True)  # fmt: skip


def made_up(step0=84.0, sharpt16=90.0, prompt_tuning16=30.0, source_validation=95.0, b_order=(0, 1, 2), replay=85.0):
    """Results of A1 (reverse), B_x/B_y/B_z (routing 0.1/0.5/0.9), C reverse_shift and a replay of reverse."""
    noise = np.linspace(-1, 1, len(SEEDS))
    runs, routing = [], []
    for s, e in zip(SEEDS, noise, strict=True):
        runs += [record("A1", "sharpt", 0, step0 + e, s), record("A1", "sharpt", 16, sharpt16 + e, s)]
        runs += [record("A1", "no_source", 16, 20 - e, s), record("A1", "prompt_tuning", 16, prompt_tuning16 - e, s)]
        runs += [
            record("reverse_shift", "sharpt", 0, 1.0, s, "C"),
            record("reverse_shift", "sharpt", 16, 30 + e, s, "C"),
        ]
        runs += [record("reverse_shift", "no_source", 16, 30 - e, s, "C")]
        runs += [record("reverse", "sharpt", 0, replay, s, "replay")]
        routing += [dict(target="A1", seed=s, stratum="A", routing=0.95, offline_mismatches=0)]
        for name, rank, route in zip(("B_x", "B_y", "B_z"), b_order, (0.1, 0.5, 0.9), strict=True):
            runs += [record(name, "sharpt", 0, 10.0 * rank + e, s, "B", route)]
            runs += [record(name, "sharpt", 16, 50 + 10 * rank, s, "B"), record(name, "no_source", 16, 50 - e, s, "B")]
            routing += [dict(target=name, seed=s, stratum="B", routing=route, offline_mismatches=0)]
    skills = [t.name for t in skills_world.SOURCES]
    sources = [
        {
            "start": "sharpt",
            "seed": s,
            "validation_curve": {"100": dict.fromkeys(skills, source_validation)},
            "test": dict.fromkeys(skills, 85.0),
        }  # fmt: skip
        for s in SEEDS
    ]
    targets = [
        dict(stratum="A", target="A1", skills=("reverse",)),
        dict(stratum="C", target="reverse_shift", skills=("reverse",)),
    ]
    targets += [dict(stratum="B", target=n, skills=("copy",)) for n in ("B_x", "B_y", "B_z")]
    predictions = [dict(p) for p in skills_config.PREDICTIONS]
    return dict(runs=runs, routing=routing, sources=sources, targets=targets, predictions=predictions)


def statuses(results: dict) -> dict[str, str]:
    return {p["id"]: p["status"] for p in skills_stats.check_predictions(results)}


def test_predictions_hold_where_the_numbers_say_so():
    got = statuses(made_up())
    assert got["A_step0"] == got["bug_replay"] == got["B_routing"] == got["bug_offline_routing"] == "held"
    assert got["bug_routed_step0"] == got["C_none"] == "held"
    assert got["A_gain16"] == "held"  # Both others 60-70 points below, intervals far above 0.
    assert got["A4_mixed"] == got["bug_oracle"] == "not tested"  # No A4, no oracle runs here.


@pytest.mark.parametrize(
    "change, prediction",
    [
        (dict(step0=60.0), "A_step0"),  # 25 points below the source's test score.
        (dict(step0=15.0), "bug_routed_step0"),  # Routed (0.95) yet near 0 at step 0.
        (dict(prompt_tuning16=85.0), "A_gain16"),  # PromptTuning within 10 points.
        (dict(b_order=(2, 1, 0)), "B_routing"),  # Scores fall as routing rises.
        (dict(replay=84.5), "bug_replay"),  # Step 0 of the replay differs from the source's test score.
    ],
)
def test_predictions_fail_where_the_numbers_say_so(change, prediction):
    assert statuses(made_up(**change))[prediction] == "failed"


def test_source_own_share_is_the_majority_vectors_share_of_the_source_instances():
    from sharpt_jax.experiments import skills_report

    split, whole = [106, 94] + [0] * 14, [0, 0, 200] + [0] * 13  # Seed 0 splits reverse over two vectors.
    sources = [dict(start="sharpt", seed=s, counts={"reverse": c, "sort": whole}) for s, c in enumerate((split, whole))]
    sources.append(dict(start="sharpt_random", seed=0, counts={"reverse": whole, "sort": whole}))  # Not SharPT's.
    targets = [
        dict(target="A1", skills=("reverse",), seeds=(0, 1)),
        dict(target="A1_seed0", skills=("reverse",), seeds=(0,)),
        dict(target="A4", skills=("sort", "reverse"), seeds=(0,)),
        dict(target="swap", skills=("swap",), seeds=(0, 1)),
    ]
    own = skills_report.source_own_share(dict(sources=sources, targets=targets))
    assert own["A1"] == pytest.approx((0.53 + 1.0) / 2) and own["A1_seed0"] == pytest.approx(0.53)
    assert own["A4"] == pytest.approx((1.0 + 0.53) / 2) and np.isnan(own["swap"])


def test_a_prediction_is_untested_where_the_source_skill_is_not_learned():
    got = statuses(made_up(source_validation=70.0, step0=0.0))
    assert got["A_step0"] == got["A_gain16"] == "not tested"


# ---------------------------------------------------------------------------------------------
# The whole experiment, tiny.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_premise(tmp_path_factory):
    """premise_quick shrunk to a few steps: A4, a target given only as a flag and a replay; SharPT (two rates, one
    selection seed), its oracle and no source training on two seeds."""
    config = skills_config.get_config("premise_quick")
    config.batch_size, config.log_every, config.eval.batch_size = 8, 2, 40  # Divisible by the 8 test devices.
    config.skills.update(
        strata={"A": (skills_config.STRATA["A"][3],)},
        methods=("sharpt", "no_source", "sharpt_oracle"),
        targets="flag_only=even:keep every other word:body+weather@16",
        seeds=(0, 1),
        source_steps=6,
        source_eval_every=3,
        target_steps=4,
        target_save_every=2,
    )
    config.skills.learning_rates.sharpt = (0.03, 0.003)
    workdir = tmp_path_factory.mktemp("premise")
    from sharpt_jax.experiments import skills_experiment

    return config, workdir, skills_experiment.run(config, workdir)


@pytest.mark.slow
def test_premise_records_routing_and_controls(tiny_premise):
    config, workdir, results = tiny_premise
    assert json.loads((workdir / "results.json").read_text())["runs"] == json.loads(json.dumps(results["runs"]))
    assert results["complete"] and "PARTIAL" not in (workdir / "results.md").read_text()
    for name in ("results.md", "gain_vs_routing.png"):
        assert (workdir / name).stat().st_size > 0
    runs = results["runs"]
    for r in runs:
        assert {"stratum", "spec", "method", "seed", "num_train", "routing", "step0_test", "test"} <= set(r)
    # Every transferring method has a step-0 record per target and seed; the flag-only target was trained.
    step0 = {(r["target"], r["method"], r["seed"]) for r in runs if r["num_train"] == 0}
    assert {("A4", m, s) for m in ("sharpt", "sharpt_oracle") for s in (0, 1)} <= step0
    assert {r["method"] for r in runs if r["target"] == "flag_only" and r["num_train"] == 16} >= {"sharpt", "no_source"}
    for entry in results["routing"]:
        saved = json.loads((workdir / entry["target"] / "step0" / f"seed{entry['seed']}" / "routing.json").read_text())
        assert saved["routing"] == entry["routing"] and 0.0 <= entry["routing"] <= 1.0
        assert entry["offline_mismatches"] == 0 and entry["encoder_mismatches"] == 0
        if "oracle_routing" in entry:
            assert entry["oracle_routing"] == 1.0  # The oracle sends every instance to its source skill's vector.
    # Source replay: the source's own test split at step 0 gives the source run's test score and skill choices.
    for entry in [e for e in results["routing"] if e["stratum"] == "replay"]:
        (source,) = [s for s in results["sources"] if s["seed"] == entry["seed"]]
        assert entry["chosen"] == source["counts"][entry["target"]]
        (replay,) = [r for r in runs if r["stratum"] == "replay" and r["seed"] == entry["seed"] and r["num_train"] == 0]
        assert replay["test"] == source["test"][entry["target"]]
    # The rate: best mean validation over the selection seeds; the other seed and the oracle use it.
    grid = [r for r in runs if (r["target"], r["method"], r["num_train"]) == ("A4", "sharpt", 16) and r["seed"] == 0]
    assert sorted(r["learning_rate"] for r in grid) == [0.003, 0.03]
    (chosen,) = [r for r in grid if r["selected"]]
    assert chosen["validation"] == max(r["validation"] for r in grid)
    for method in ("sharpt", "sharpt_oracle"):
        (other,) = [r for r in runs if (r["target"], r["method"], r["num_train"], r["seed"]) == ("A4", method, 16, 1)]
        assert other["learning_rate"] == chosen["learning_rate"]
    assert {p["id"] for p in results["prediction_status"]} == {p["id"] for p in skills_config.PREDICTIONS}


@pytest.mark.slow
def test_premise_continues_without_retraining(tiny_premise, monkeypatch):
    from sharpt_jax import train
    from sharpt_jax.experiments import skills_experiment

    config, workdir, results = tiny_premise
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = skills_experiment.run(config, workdir)
    assert again["runs"] == results["runs"]


@pytest.mark.slow
def test_the_same_command_twice_shares_the_units(tmp_path):
    """Two processes of one command on one workdir: the second waits for the sources and step 0, the two split the
    (target, size) units between them (no run folder is ever contended), and both end with the complete results."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "run.py", "--config=configs/skills.py:premise_quick", f"--workdir={tmp_path}"]
    cmd += ["--config.batch_size=8", "--config.eval.batch_size=40", "--config.skills.source_steps=6"]
    cmd += ["--config.skills.source_eval_every=3", "--config.skills.target_steps=4"]
    cmd += ["--config.skills.target_save_every=2"]
    procs = [
        subprocess.Popen(cmd, cwd=root, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"]
    trained = [r for r in results["runs"] if r["num_train"] > 0]
    assert len(trained) == len({r["run"] for r in trained}) == len(list(tmp_path.glob("*/*/n16/*/seed0/record.json")))
    # Each process trained some units ("<task>: <method> target stage, ..."), and no unit was trained by both.
    units = [{line.split()[0] for line in log.splitlines() if " target stage, " in line} for log in logs]
    assert all(units) and not units[0] & units[1], units


@pytest.mark.slow
def test_diagnostics_untrained_sharpt_is_its_step0_and_extend_resumes(tiny_premise):
    """scripts/premise_diagnostics.py: SharPT with learning rate 0 scores what the step-0 record scored (the same
    transferred parameters, through the trainer); an extended run resumes from the copied checkpoints."""
    import subprocess
    import sys
    from pathlib import Path

    config, workdir, results = tiny_premise
    script = [sys.executable, "scripts/premise_diagnostics.py"]
    root = Path(__file__).resolve().parents[1]
    untrained = [*script, "untrained", f"--workdir={workdir}", "--targets=A4", "--methods=sharpt"]
    extend = [*script, "extend", f"--workdir={workdir}", "--steps=8", "--strata=A,extra", "--methods=sharpt,no_source"]
    for cmd in (untrained, extend):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True)
    rows = json.loads((workdir / "untrained" / "results.json").read_text())["runs"]
    step0 = {
        r["seed"]: r["test"]
        for r in results["runs"]
        if (r["target"], r["method"], r["num_train"]) == ("A4", "sharpt", 0)
    }
    assert {r["seed"]: r["untrained_test"] for r in rows} == step0 and len(step0) == 2
    rows = json.loads((workdir / "budget" / "results.json").read_text())["runs"]
    picked = [
        r
        for r in results["runs"]
        if r["selected"]
        and r["stratum"] in ("A", "extra")
        and r["method"] in ("sharpt", "no_source")
        and r["num_train"] == 16
        and r.get("best_step") == r["last_step"]
    ]
    assert rows and sorted(r["run"] for r in rows) == sorted(r["run"] for r in picked)
    for row in rows:
        original, extended = (
            json.loads((d / "eval" / "results.json").read_text())
            for d in (workdir / row["run"], workdir / "budget" / row["run"])
        )
        assert sorted(int(s) for s in extended if s.isdigit()) == list(range(2, 9, 2))
        assert all(extended[s] == original[s] for s in original if s.isdigit())  # Scored once, read back.
        assert row["validation_at_8"] >= row["validation"]


@pytest.mark.slow
def test_diagnostics_route_sends_every_instance_to_the_named_skills_vector(tiny_premise):
    """scripts/premise_diagnostics.py route: each chosen-rate SharPT run again with every instance on the vector
    that the named skill's source instances choose most (the evaluator's counts say so), paired with SharPT."""
    import subprocess
    import sys
    from pathlib import Path

    config, workdir, results = tiny_premise
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "scripts/premise_diagnostics.py", "route", f"--workdir={workdir}", "--targets=A4"]
    subprocess.run([*cmd, "--to=copy,map"], cwd=root, check=True, capture_output=True, text=True)
    summary = json.loads((workdir / "routed" / "results.json").read_text())
    sharpt = {
        r["seed"]: r
        for r in results["runs"]
        if (r["target"], r["method"], r["num_train"], r["selected"]) == ("A4", "sharpt", 16, True)
    }
    assert sorted((r["to"], r["seed"]) for r in summary["runs"]) == [
        (s, seed) for s in ("copy", "map") for seed in sorted(sharpt)
    ]
    for row in summary["runs"]:
        (source,) = [s for s in results["sources"] if s["start"] == "sharpt" and s["seed"] == row["seed"]]
        skills = json.loads((workdir / "routed" / row["to"] / row["run"] / "eval" / "skills.json").read_text())
        counts = np.array(next(iter(skills[str(row["best_step"])]["test"].values())))
        assert counts.sum() == counts[source["majority"][row["to"]]] > 0
        assert row["sharpt"] == sharpt[row["seed"]]["test"]
    for paired in summary["paired"]:
        routed = [r["test"] - r["sharpt"] for r in summary["runs"] if r["to"] == paired["to"]]
        assert paired["minus_sharpt"]["mean"] == pytest.approx(np.mean(routed))
    bad = subprocess.run([*cmd, "--to=juggle"], cwd=root, capture_output=True, text=True)
    assert bad.returncode == 2 and "not source skills" in bad.stderr


def test_partial_results_name_the_complete_units_and_the_started_ones():
    """results.md of a partial run (the committed records cut to A1 at 16 examples and one seed of A2) says which
    (target, size) units have every run and which have only some."""
    from pathlib import Path

    from sharpt_jax.experiments import skills_report

    results = json.loads((Path(__file__).parents[1] / "bench/results/skills_premise/results.json").read_text())
    kept = {("A1", 16, s) for s in range(5)} | {("A2", 16, 0)}
    results["runs"] = [
        r for r in results["runs"] if r["num_train"] == 0 or (r["target"], r["num_train"], r["seed"]) in kept
    ]
    results.update(complete=False, units_complete=["A1 n=16"])
    (line,) = [line for line in skills_report.premise_markdown(results).splitlines() if line.startswith("PARTIAL")]
    assert "every target run of 1 of 32 (target, size) pairs (A1 n=16), some of A2 n=16." in line
