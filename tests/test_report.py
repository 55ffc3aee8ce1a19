"""sharpt_jax.report on small real runs (the demo's stages, two seeds; one run scored by another protocol) and
scripts/reproduce.py's plan, resume and report."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from tiny_run import make_assets, tiny_config

from bench import flops, shapes
from scripts import reproduce
from sharpt_jax.experiments import demo
from sharpt_jax.experiments import paper_report as report

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory):
    """runs/seeds/demo<s>: the demo's stages (SharPT source on sst2+rte, SharPT and PromptTuning on cb) for seeds
    0 and 1, rank-classified."""
    root = tmp_path_factory.mktemp("runs")
    config = tiny_config(assets, mode="demo")
    config.eval.scoring = "rank_classification"  # Varied scores from a random T5: a std to check.
    config.demo.update(source_tasks="sst2,rte", targets="cb", baselines="prompt_tuning")
    config.demo.update(source_steps=4, target_steps=4, baseline_learning_rate=0.3)
    for seed in (0, 1):
        config.seed = seed
        demo.run(config, root / "seeds" / f"demo{seed}")
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_mean_and_std_over_seeds(runs, tmp_path):
    report.write(runs / "seeds", tmp_path)
    rows = read_csv(tmp_path / "results.csv")
    md = (tmp_path / "results.md").read_text()
    by_cell = {(r["setting"], r["method"], r["task"]): r for r in rows}
    assert len(by_cell) == len(rows)

    def test_of(stage: str) -> list[dict]:
        return [
            json.loads((runs / "seeds" / f"demo{s}" / stage / "eval" / "best.json").read_text())["test"] for s in (0, 1)
        ]

    # The demo starts its codebook by k-means (configs/common.py), a departure from the paper: rows of their own.
    sharpt, source = "sharpt (codebook_init=kmeans)", "sharpt (source stage; codebook_init=kmeans)"
    expected = {("sst2,rte", sharpt, "cb"): [t["score"] for t in test_of("cb")]}
    expected["sst2,rte", "prompt_tuning", "cb"] = [t["score"] for t in test_of("cb_prompt_tuning")]
    for task in ("sst2", "rte"):  # The source run's number for a task: the mean of that task's metrics.
        scores = [np.mean([v for k, v in t.items() if k.startswith(f"{task}/")]) for t in test_of("source")]
        expected["source stage: sst2,rte", source, task] = scores
    for (setting, method, task), scores in expected.items():
        row = by_cell[setting, method, task]
        assert (row["size"], int(row["n"]), row["paper"]) == ("random", 2, "")
        assert float(row["mean"]) == pytest.approx(np.mean(scores))
        assert float(row["std"]) == pytest.approx(np.std(scores, ddof=1))
        assert f"{np.mean(scores):.1f} +- {np.std(scores, ddof=1):.1f} (2)" in md
    # One column: each target row's Avg is its cb cell; the source's Avg is the mean of its tasks per seed.
    assert by_cell["sst2,rte", sharpt, "Avg"]["mean"] == by_cell["sst2,rte", sharpt, "cb"]["mean"]
    source_avg = np.mean([expected["source stage: sst2,rte", source, t] for t in ("sst2", "rte")], 0)
    assert float(by_cell["source stage: sst2,rte", source, "Avg"]["std"]) == pytest.approx(np.std(source_avg, ddof=1))
    assert len(rows) == 7 and "| PromptTuning | " in md and "| SharPT (codebook_init=kmeans) | " in md
    assert not (tmp_path / "figure2.png").exists()  # One size.


def test_demo_workdir_gives_a_table_and_a_heatmap(runs, tmp_path):
    report.main(["--runs", str(runs / "seeds" / "demo0"), "--out", str(tmp_path)])
    md = (tmp_path / "results.md").read_text()
    assert "## Targets of the sst2,rte source setting, T5 random" in md
    assert "| method | cb | Avg |" in md and "(1) |" in md
    for name in ("task_relations.png", "skill_usage.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
        assert matplotlib.image.imread(tmp_path / name).ndim == 3
    assert "the SharPT source run" in md and "and 1 target runs from it" in md  # Source and cb: 3 tasks.


def test_protocols_are_never_mixed(runs, tmp_path):
    """demo0's PromptTuning run as if scored by decoding, and as if made before protocols were recorded
    ("unknown"): three protocols, three tables for PromptTuning on cb."""
    for name, protocol in (("decode", {"scoring": "decode", "split_protocol": "P"}), ("old", None)):
        copy = tmp_path / "runs" / name
        shutil.copytree(runs / "seeds" / "demo0" / "cb_prompt_tuning", copy)
        best = json.loads((copy / "eval" / "best.json").read_text())
        best["protocol"] = protocol
        if protocol is None:
            del best["protocol"]
        (copy / "eval" / "best.json").write_text(json.dumps(best))
    shutil.copytree(runs / "seeds", tmp_path / "runs" / "seeds")
    report.write(tmp_path / "runs", tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "results.csv")
    cb = [r for r in rows if (r["method"], r["task"]) == ("prompt_tuning", "cb")]
    assert {r["protocol"].split(";")[0]: int(r["n"]) for r in cb} == {
        "scoring rank_classification": 2,
        "scoring decode": 1,
        "unknown": 1,
    }
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.count("## Runs without a source stage") == 2  # The decoded and the unknown run, each alone.
    assert "(protocol 1: scoring decode)" in md and "(protocol 3: unknown)" in md


def as_paper_run(demo: Path, copy: Path, size: str, stages=("source", "cb", "cb_prompt_tuning"), **source_fields):
    """Copies the `stages` of a demo workdir to `copy` as if they were T5-`size` runs on the high_to_low mixture
    (each config's `size` field, as configs/source_mix.py and target.py record it), with `source_fields` set in
    the source run's config."""
    for stage in stages:
        shutil.copytree(demo / stage, copy / stage)
        config_file = copy / stage / "config.json"
        config = json.loads(config_file.read_text())
        config.update(t5=f"/models/{size}_copy", size=size)  # A local folder: its name is not the size.
        if config["source_checkpoint"]:
            config["source_checkpoint"] = str(copy / "source")
        if config["stage"] == "source":
            config.update(task="source_high_to_low", **source_fields)
        config_file.write_text(json.dumps(config))


def test_sizes_and_the_papers_numbers(runs, tmp_path):
    """Copies of demo0 as if it were T5-base and T5-large on the high_to_low mixture: the paper's rows appear
    beside the T5-base table, and Figure 2 is drawn."""
    for size in ("base", "large"):
        as_paper_run(runs / "seeds" / "demo0", tmp_path / "runs" / size, size)
    written = report.write(tmp_path / "runs", tmp_path / "out")
    assert tmp_path / "out" / "figure2.png" in written
    assert (tmp_path / "out" / "figure2.png").read_bytes()[:8] == PNG
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| SharPT (paper) | 94.6 | 94.6 |" in md and "| PromptTuning (paper) | 92.7 | 92.7 |" in md
    assert md.count("(paper) |") == 2  # T5-base only.
    assert "T5 base" in md and "T5 large" in md and "_copy" not in md  # Sizes from the configs' size field.
    paper = {(r["size"], r["method"], r["task"]): r["paper"] for r in read_csv(tmp_path / "out" / "results.csv")}
    sharpt = "sharpt (codebook_init=kmeans)"
    assert paper["base", sharpt, "cb"] == "94.6" and paper["large", sharpt, "cb"] == ""


def test_departures_from_the_paper_are_rows_of_their_own(runs, tmp_path):
    """demo0 (k-means codebook start) beside a copy of its source and cb runs whose source started as the paper
    does, and runs of method no_source: a target's departures come from its source run's config (its own says
    kmeans), a no_source run's from its own; the paper's SharPT row comes under both SharPT rows."""
    demo = runs / "seeds" / "demo0"
    as_paper_run(demo, tmp_path / "runs" / "kmeans", "base")
    as_paper_run(demo, tmp_path / "runs" / "paper", "base", ("source", "cb"), codebook_init="random")
    assert json.loads((tmp_path / "runs" / "paper" / "cb" / "config.json").read_text())["codebook_init"] == "kmeans"
    for name, fields in (("no_source", {}), ("no_source_paper", {"codebook_init": "random"})):
        shutil.copytree(demo / "cb", tmp_path / "runs" / name)  # Scores of a target run, read as a no_source run's.
        config = json.loads((demo / "cb" / "config.json").read_text())
        config.update(method="no_source", source_checkpoint="", t5="/models/base_copy", size="base", **fields)
        (tmp_path / "runs" / name / "config.json").write_text(json.dumps(config))
    report.write(tmp_path / "runs", tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "results.csv")
    cb = {r["method"]: r for r in rows if r["task"] == "cb" and r["setting"] == "high_to_low"}
    score = json.loads((demo / "cb" / "eval" / "best.json").read_text())["test"]["score"]
    assert set(cb) == {
        "sharpt",
        "sharpt (codebook_init=kmeans)",
        "prompt_tuning",
        "no_source",
        "no_source (codebook_init=kmeans)",
    }
    for method in ("sharpt", "sharpt (codebook_init=kmeans)", "no_source", "no_source (codebook_init=kmeans)"):
        assert (float(cb[method]["mean"]), cb[method]["n"]) == (pytest.approx(score), "1")
    assert cb["sharpt"]["paper"] == cb["sharpt (codebook_init=kmeans)"]["paper"] == "94.6"
    assert cb["no_source"]["paper"] == "89.3"
    lines = (tmp_path / "out" / "results.md").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("## Targets of the high_to_low source setting"))
    names = [line.split(" | ")[0].removeprefix("| ") for line in lines[first + 4 : first + 12]]
    assert names == [
        "PromptTuning",
        "PromptTuning (paper)",
        "SharPT",
        "SharPT (codebook_init=kmeans)",
        "SharPT (paper)",
        "no source training",
        "no source training (codebook_init=kmeans)",
        "no source training (paper)",
    ]
    sources = {r["method"] for r in rows if r["setting"].startswith("source stage")}
    assert sources == {"sharpt (source stage)", "sharpt (source stage; codebook_init=kmeans)"}


def test_errors(tmp_path):
    with pytest.raises(report.ReportError, match="no runs under"):
        report.write(tmp_path, tmp_path / "out")
    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text("{")
    (tmp_path / "run" / "eval" / "best.json").write_text("{}")
    with pytest.raises(report.ReportError, match=r"run/config.json: cannot read it"):
        report.write(tmp_path, tmp_path / "out")
    (tmp_path / "run" / "config.json").write_text('{"method": "sharpt"}')
    with pytest.raises(report.ReportError, match=r"run: config.json or eval/best.json lacks the field 'stage'"):
        report.write(tmp_path, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# The runner.
# ---------------------------------------------------------------------------------------------


def test_plan_has_every_run_each_table_needs_once(tmp_path):
    # Per seed, by hand from the paper: Table 1 = 1 SharPT source + 10 SharPT targets + 10 PromptTuning + 10
    # ModelTuning; Table 2 = 1 source (category) + 5 + 5 + 5; Table 3 = SharPT source + 4 targets, no-latent
    # source + 4 targets, 4 no-source runs. Shared: PromptTuning and ModelTuning (Tables 1, 2), the high_to_low
    # SharPT source and its boolq, cb, cola, copa targets (Tables 1, 3).
    for tables, per_seed in (([1], 31), ([2], 16), ([3], 14), ([1, 2, 3], 31 + 6 + 9)):
        runs = reproduce.plan(tmp_path, tables, seeds=[0, 1, 2], sizes=["base"])
        assert len(runs) == len({r.workdir for r in runs}) == 3 * per_seed
    runs = reproduce.plan(tmp_path, [1, 2, 3], seeds=[0], sizes=["base"])
    counts = {t: sum(t in r.tables for r in runs) for t in (1, 2, 3)}
    assert counts == {1: 31, 2: 16, 3: 14}
    by_dir = {r.workdir.relative_to(tmp_path / "base" / "seed0").as_posix(): r for r in runs}
    assert by_dir["prompt_tuning/cb"].tables == {1, 2} and by_dir["prompt_tuning/boolq"].tables == {1}
    assert by_dir["source_high_to_low/sharpt"].tables == {1, 3} and by_dir["high_to_low/sharpt/cb"].tables == {1, 3}
    assert sum(r.config.startswith("configs/source_mix.py") for r in runs) == 3
    assert not any(r.scored for r in runs if r.config.startswith("configs/source_mix.py"))
    assert by_dir["no_source/cola"].config == "configs/target.py:cola,method=no_source,size=base"
    first_target = min(i for i, r in enumerate(runs) if not r.config.startswith("configs/source_mix.py"))
    assert all(not r.config.startswith("configs/source_mix.py") for r in runs[first_target:])


def test_dry_run_prints_the_commands(tmp_path, capsys):
    args = ["--runs", str(tmp_path), "--tables", "2", "--seeds", "0,1", "--dry_run", "--t5", "base=random"]
    reproduce.main([*args, "--data_dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert "# Plan: 32 runs (Table 2: 32)" in out
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 * (1 + 2 * 15) + 1  # Sources train only; targets train and eval; the report.
    assert all("--config.t5=random" in c for c in commands[:-1]) and "sharpt_jax.report" in commands[-1]
    assert not (tmp_path / "base").exists()
    for mistake in (
        ["--config.seed=3"],  # The runner sets the seed.
        ["--config.t5=random"],  # One T5 per size: --t5 SIZE=DIR.
        ["--t5", "large=random"],  # Not one of --sizes.
        [],  # Table 2's source mixture holds CxC: --data_dir is needed.
    ):
        with pytest.raises(SystemExit):
            reproduce.main([*args[:-2], *mistake])
        assert "error: " in capsys.readouterr().err


def test_plan_prices_every_run_and_paths_are_the_users(tmp_path, monkeypatch, capsys):
    """Relative --runs, --data_dir, --t5 and path fields are taken from the current folder; each run's line gives
    its steps, bench/flops.py's model FLOPs of its train step (the paper's shapes, read by hand here) times the
    steps, and the GPU-hours at the given MFU and peak."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t5_large").mkdir()
    args = ["--runs", "runs", "--tables", "3", "--tasks", "cb", "--sizes", "base,large", "--t5", "large=t5_large"]
    args += ["--data_dir", "data", "--mfu", "0.5", "--peak_tflops", "100", "--dry_run"]
    reproduce.main([*args, "--config.batch_size=16", "--config.encoder_vocab=vocab.txt"])
    out = capsys.readouterr().out
    plan = [line for line in out.splitlines() if line.startswith("# [") and " steps, " in line]
    lines = {line.split("] ")[1].split(":")[0]: line for line in plan}
    assert len(lines) == 2 * 5  # Per size: 2 sources, their 2 cb targets, no_source on cb.
    # The paper's shapes: inputs 512, instance inputs 128, K = 100, L = 64; targets 128 (sources), 16 (targets).
    point = dict(batch=16, input_len=512, prompt_len=64, num_skills=100, instance_len=128)
    expected = {
        "base/seed0/source_high_to_low/sharpt": ("sharpt", "source", 128, 80_000, "base"),
        "large/seed0/high_to_low/no_latent/cb": ("no_latent", "target", 16, 100_000, "large"),
        "base/seed0/no_source/cb": ("sharpt", "source", 16, 100_000, "base"),  # no_source trains as a source.
    }
    for name, (method, stage, target_len, steps, size) in expected.items():
        step = flops.train_step_flops(
            shapes.T5_SHAPES[size],
            shapes.BERT_SHAPES["base"],
            shapes.Point(method, stage, target_len=target_len, **point),
        )["total"]
        numbers = re.search(r": ([\d,]+) steps, (\S+) FLOP, (\S+) GPU-h$", lines[name]).groups()
        assert int(numbers[0].replace(",", "")) == steps
        assert float(numbers[1]) == pytest.approx(step * steps, rel=5e-3)
        assert float(numbers[2]) == pytest.approx(step * steps / (0.5 * 100e12) / 3600, rel=5e-3)
    commands = [line for line in out.splitlines() if line.startswith(sys.executable)]
    assert all(f"--config.data_dir={tmp_path / 'data'}" in c for c in commands[:-1])
    assert all(f"--config.encoder_vocab={tmp_path / 'vocab.txt'}" in c for c in commands[:-1])
    assert all(f"--workdir={tmp_path / 'runs'}/" in c for c in commands[:-1])
    large = [c for c in commands[:-1] if "size=large" in c]
    assert len(large) == 8 and all(f"--config.t5={tmp_path / 't5_large'}" in c for c in large)
    assert not any("--config.t5=" in c for c in commands[:-1] if "size=base" in c)  # The hub id of the config.


def test_finished_runs_are_the_scored_last_steps(runs, tmp_path):
    shutil.copytree(runs / "seeds" / "demo0" / "cb", tmp_path / "cb")
    run = reproduce.Run(tmp_path / "cb", "configs/target.py:cb", [], scored=True, tables={1})
    assert reproduce.finished(run)
    last = tmp_path / "cb" / "checkpoints" / "4"
    best = (tmp_path / "cb" / "eval" / "best.json").stat().st_mtime
    os.utime(last / "_CHECKPOINT_METADATA", (best + 10, best + 10))  # A checkpoint newer than the scores: eval again.
    assert not reproduce.finished(run)
    assert reproduce.finished(reproduce.Run(tmp_path / "cb", "", [], scored=False, tables={1}))
    config = json.loads((tmp_path / "cb" / "config.json").read_text())
    (tmp_path / "cb" / "config.json").write_text(json.dumps({**config, "num_train_steps": 8}))
    assert not reproduce.finished(reproduce.Run(tmp_path / "cb", "", [], scored=False, tables={1}))  # Train on.


def tiny_flags(assets: dict) -> list[str]:
    """Runner flags that make every run of configs/source_mix.py and configs/target.py tiny (as tiny_run)."""
    flags = dict(t5_vocab=assets["t5_vocab"], encoder=assets["encoder"])
    flags.update(encoder_pooling="cls", backbone_dtype="float32", batch_size=8, num_skills=4, prompt_length=4)
    flags.update(num_train_steps=4, save_every=2, log_every=2, warmup_steps=2)
    flags.update({"sequence_length.inputs": 48, "sequence_length.targets": 6, "sequence_length.instance_inputs": 32})
    flags.update({"eval.batch_size": 16, "eval.max_decode_len": 6})
    flags.update({f"t5_random.{k}": v for k, v in dict(d_model=32, d_kv=8, d_ff=64, num_layers=1).items()})
    flags["t5_random.num_decoder_layers"] = 1
    runner = ["--t5", "base=random", "--data_dir", assets["data_dir"]]
    return runner + [f"--config.{key}={value}" for key, value in flags.items()]


def run_runner(runs_dir: Path, args: list[str]) -> str:
    cmd = [sys.executable, "scripts/reproduce.py", "--runs", str(runs_dir), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_runner_runs_then_skips_what_finished(assets, tmp_path):
    args = ["--tables", "1", "--tasks", "cb", "--methods", "prompt_tuning", *tiny_flags(assets)]
    out = run_runner(tmp_path, args)
    assert out.count("$ ") == 2  # Train and eval of the one run.
    best = json.loads((tmp_path / "base" / "seed0" / "prompt_tuning" / "cb" / "eval" / "best.json").read_text())
    rows = read_csv(tmp_path / "report" / "results.csv")
    assert [(r["method"], r["task"], float(r["mean"])) for r in rows][0] == (
        "prompt_tuning",
        "cb",
        best["test"]["score"],
    )
    out = run_runner(tmp_path, args)
    assert "$ " not in out and "base/seed0/prompt_tuning/cb: finished, skipped" in out


@pytest.mark.slow
def test_runner_table_1_on_one_task(assets, tmp_path):
    """SharPT's source stage on the full high_to_low mixture (bundled samples), its cb target and both baselines."""
    args = ["--tables", "1", "--tasks", "cb", *tiny_flags(assets)]
    out = run_runner(tmp_path, args)
    assert out.count("$ ") == 1 + 3 * 2
    md = (tmp_path / "report" / "results.md").read_text()
    assert "## Targets of the high_to_low source setting, T5 random" in md
    for method in ("ModelTuning", "PromptTuning", "SharPT"):
        assert f"| {method} | " in md
    assert "finished, skipped" in run_runner(tmp_path, args)
