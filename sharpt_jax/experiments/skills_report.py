"""Tables and figures of the skills-world experiment (sharpt_jax/experiments/skills_experiment.py).

`write(results, workdir)` writes, from the experiment's records:
  results.json         the records, a summary per (method, target, size) and the codebook measures
  results.md           test exact match, mean +- std over seeds, beside the backbone's ceiling; codebook measures
  score_vs_size.png    test exact match against training-set size per method, one panel per target (error bars:
                       std over seeds)
  skill_usage.png      which skill vector the test instances of every task choose, by true skill (seed 0)
  task_relations.png   the paper's Figure 3 for this world: cosine similarity of the tasks' average one-hot
                       skill choices (seed 0)

`write_premise(results, workdir)` writes the premise test's (sharpt_jax/experiments/skills_premise.py):
  results.json         the records, routing, sources, predictions with their status, the paired table
  results.md           the predictions held / failed, one table per stratum (step 0 and every size, routing),
                       the paired differences, the source replay, the source stage, the share of runs that peak
                       at their last checkpoint
  gain_vs_routing.png  SharPT's step-0 score and its gain over no source training against routing, per target
"""

import math
from pathlib import Path

import numpy as np

from sharpt_jax import storage
from sharpt_jax.experiments import plots, skills_stats
from sharpt_jax.models import methods
from tasks import skills_world

NAN = float("nan")
# The experiment's variants of the paper's methods (the others are named by the method table).
VARIANT_TITLES = {
    "sharpt_restarts": "SharPT, restarts",
    "sharpt_kmeans": "SharPT, k-means start",
    "sharpt_kmeans_restarts": "SharPT, k-means start + restarts",
}


def title(method: str) -> str:
    """How tables and figures name a method or variant of the experiment."""
    if method in VARIANT_TITLES:
        return VARIANT_TITLES[method]
    return methods.METHODS[method].title if method in methods.METHODS else method


def write(results: dict, workdir: Path) -> None:
    results["summary"] = summarize(results["runs"])
    results["codebook_measures"] = {
        method: {seed: codebook_measures(c) for seed, c in by_seed.items()}
        for method, by_seed in results["codebook"].items()
    }
    storage.write_json(workdir / "results.json", results)
    storage.write_text(workdir / "results.md", markdown(results))
    plot_scores(results, workdir / "score_vs_size.png")
    for method, by_seed in results["codebook"].items():  # The first seed's source run of each codebook variant.
        suffix = "" if method == "sharpt" else f"_{method}"
        first = by_seed[min(by_seed, key=int)]
        plot_skill_usage(first, workdir / f"skill_usage{suffix}.png")
        plot_task_relations(first, workdir / f"task_relations{suffix}.png")
    print(markdown(results), flush=True)


# ---------------------------------------------------------------------------------------------
# Numbers.
# ---------------------------------------------------------------------------------------------


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and sample std of test exact match over the seeds of the selected rate, per (method, target, size)."""
    groups = {}
    for r in runs:
        if r["selected"]:
            groups.setdefault((r["method"], r["target"], r["num_train"]), []).append(r)
    out = []
    for (method, target, size), rs in groups.items():
        test = np.array([r["test"] for r in rs])
        out.append(
            {
                "method": method,
                "target": target,
                "num_train": size,
                "learning_rate": rs[0]["learning_rate"],
                "seeds": len(rs),
                "test_mean": float(test.mean()),
                "test_std": float(test.std(ddof=1)) if len(rs) > 1 else 0.0,
                "token_accuracy_mean": float(np.mean([r["test_token_accuracy"] for r in rs])),
            }
        )
    return out


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def contingency_measures(counts: np.ndarray) -> dict:
    """counts [true skills, K]: purity, NMI (arithmetic normalisation), skill perplexity and dead skills."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    joint = counts / total
    p_true, p_skill = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    mutual = float(np.sum(joint[nonzero] * np.log(joint[nonzero] / np.outer(p_true, p_skill)[nonzero])))
    h_true, h_skill = _entropy(p_true), _entropy(p_skill)
    return {
        "purity": float(counts.max(0).sum() / total),
        "nmi": mutual / ((h_true + h_skill) / 2) if h_true + h_skill > 0 else 1.0,
        "skill_perplexity": math.exp(h_skill),
        "dead_skills": int(np.sum(counts.sum(0) == 0)),
    }


def codebook_measures(codebook: dict) -> dict:
    """Measures of one source run's codebook: on the 8 source tasks (one true skill each) and per target."""
    tasks = codebook["tasks"]
    source_rows = np.concatenate([np.asarray(tasks[t.name]["counts"]) for t in skills_world.SOURCES])
    out = {"sources": contingency_measures(source_rows)}
    by_skill = {t.skills[0]: np.asarray(tasks[t.name]["counts"]).sum(0) for t in skills_world.SOURCES}
    for target in skills_world.TARGETS:
        counts = np.asarray(tasks[target.name]["counts"])
        entry = {"choices": counts.sum(0).tolist(), **contingency_measures(counts)}
        # Share of the target's instances that pick the skill vector its true skill's source task uses most.
        if len(target.skills) == 1 and target.skills[0] in by_skill:
            entry["source_skill_share"] = float(counts.sum(0)[by_skill[target.skills[0]].argmax()] / counts.sum())
        out[target.name] = entry
    return out


# ---------------------------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    summary = results["summary"]
    targets = list(dict.fromkeys(s["target"] for s in summary))
    sizes = sorted({s["num_train"] for s in summary})
    cell = {(s["method"], s["target"], s["num_train"]): s for s in summary}
    header = [f"{t} {n}" for t in targets for n in sizes]
    lines = [
        "Test exact match (%) of the best-validation checkpoint, mean +- std over seeds "
        "(columns: target and number of training examples).",
        "",
        "| method | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
    ]
    for method in dict.fromkeys(s["method"] for s in summary):
        row = []
        for t in targets:
            for n in sizes:
                s = cell.get((method, t, n))
                row.append("" if s is None else f"{s['test_mean']:.1f} +- {s['test_std']:.1f}")
        lines.append(f"| {title(method)} | " + " | ".join(row) + " |")
    ceiling = results["ceiling"]["with_instruction"]
    lines.append(
        "| backbone + instruction (ceiling) | "
        + " | ".join(f"{ceiling[t]:.1f}" for t in header_targets(targets, sizes))
        + " |"
    )
    floor = results["ceiling"]["without_instruction"]
    lines.append(
        "| backbone, no prompt (floor) | "
        + " | ".join(f"{floor[t]:.1f}" for t in header_targets(targets, sizes))
        + " |"
    )
    seeds = sorted({s["seeds"] for s in summary})
    lines += ["", f"Seeds per cell: {', '.join(map(str, seeds))}. Selected learning rates:", ""]
    lines.append("| method | " + " | ".join(header) + " |")
    lines.append("|---|" + "---|" * len(header))
    for method in dict.fromkeys(s["method"] for s in summary):
        rates = [
            f"{cell[(method, t, n)]['learning_rate']:g}" if (method, t, n) in cell else ""
            for t in targets
            for n in sizes
        ]
        lines.append(f"| {title(method)} | " + " | ".join(rates) + " |")
    measures = results.get("codebook_measures", {})
    if measures:
        lines += [
            "",
            "SharPT's codebook after the source stage, on the test instances (per variant and source seed): purity "
            "and NMI of "
            "the chosen skill vector against the true skill on the 8 source tasks, skill perplexity (exp of the "
            "entropy of skill use; 8 = one vector per source skill), dead skills (of K), the NMI within "
            "sort_or_reverse (1 = its two behaviours go to different vectors), and for the single-skill targets "
            "the share of instances that pick the vector their skill's source task uses most.",
            "",
            "| method | seed | purity | NMI | perplexity | dead | sort_or_reverse NMI | reverse_shift share "
            "| sort_shift share |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method, by_seed in measures.items():
            for seed, m in sorted(by_seed.items(), key=lambda kv: int(kv[0])):
                s = m["sources"]
                cells = [s["purity"], s["nmi"], s["skill_perplexity"], s["dead_skills"], m["sort_or_reverse"]["nmi"]]
                cells += [m[t].get("source_skill_share", NAN) for t in ("reverse_shift", "sort_shift")]
                lines.append(_row(f"{title(method)} | {seed}", cells))
    geometry = {
        (method, seed): c["geometry"]
        for method, by_seed in results["codebook"].items()
        for seed, c in by_seed.items()
        if "geometry" in c
    }
    if geometry:
        lines += [
            "",
            "Where the source instances' embeddings e0 lie relative to the skill vectors (means over the 8 source "
            "tasks' test instances): the norm of e0, its distance to the centroid of all e0, to the chosen skill "
            "vector and to the nearest unused one, and the norms of used and unused skill vectors.",
            "",
            "| method | seed | norm e0 | e0 to centroid | e0 to chosen | e0 to nearest unused | norm used "
            "| norm unused |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (method, seed), g in sorted(geometry.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
            names = ("embedding_norm", "embedding_distance_to_centroid", "distance_to_chosen_skill")
            names += ("distance_to_nearest_unused_skill", "used_skill_norm", "unused_skill_norm")
            lines.append(_row(f"{title(method)} | {seed}", [g.get(name, NAN) for name in names]))
    return "\n".join(lines) + "\n"


def _row(first, values) -> str:
    return f"| {first} | " + " | ".join(str(v) if isinstance(v, int) else f"{v:.2f}" for v in values) + " |"


def header_targets(targets: list[str], sizes: list[int]) -> list[str]:
    return [t for t in targets for _ in sizes]


# ---------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------


def plot_scores(results: dict, out: Path) -> None:
    """Test exact match against training-set size per method, one panel per target (error bars: std)."""
    summary = results["summary"]
    panels = {}
    for s in sorted(summary, key=lambda s: s["num_train"]):
        curve = panels.setdefault(s["target"], {}).setdefault(title(s["method"]), [])
        curve.append((s["num_train"], s["test_mean"], s["test_std"]))
    ceiling = {target: results["ceiling"]["with_instruction"][target] for target in panels}
    plots.curves(panels, out, xlabel="training examples", ylabel="test exact match (%)", log2_x=True, reference=ceiling)


def plot_skill_usage(codebook: dict, out: Path) -> None:
    """Rows: (task, true skill); columns: skill vectors; cells: fraction of the row's test instances."""
    labels, rows = [], []
    for task, entry in codebook["tasks"].items():
        for skill, counts in zip(entry["true_skills"], entry["counts"], strict=True):
            labels.append(f"{task} ({skill})" if task != skill else task)
            rows.append(counts)
    plots.skill_heatmap(labels, rows, "Skill choice of test instances by task (true skill)", out)


def plot_task_relations(codebook: dict, out: Path) -> None:
    """Figure 3 of one source run's codebook choices ({"tasks": {task: {"counts": [[K] per true skill]}}})."""
    usage = {task: np.asarray(entry["counts"]).sum(0) for task, entry in codebook["tasks"].items()}
    plots.task_relations(usage, out)


# ---------------------------------------------------------------------------------------------
# The premise test.
# ---------------------------------------------------------------------------------------------

PREMISE_TITLES = {"sharpt_oracle": "SharPT, oracle routing", "no_latent_no_source": "no latent space, no source"}


def write_premise(results: dict, workdir: Path) -> None:
    results["paired"] = skills_stats.paired_table(results["runs"])
    results["prediction_status"] = skills_stats.check_predictions(results)
    storage.write_json(workdir / "results.json", results)
    text = premise_markdown(results)
    storage.write_text(workdir / "results.md", text)
    plot_gain_vs_routing(results, workdir / "gain_vs_routing.png")
    print(text, flush=True)


def premise_markdown(results: dict) -> str:
    lines = []
    if not results.get("complete", True):
        done = results["units_complete"]
        started = sorted(
            {f"{r['target']} n={r['num_train']}" for r in results["runs"] if r["num_train"] > 0} - set(done)
        )
        planned = sum(len(t["sizes"]) for t in results["targets"] if t["stratum"] != "replay")
        lines += [
            f"PARTIAL: routing and step 0 of every target; every target run of {len(done)} of {planned} (target, "
            f"size) pairs ({', '.join(done) or 'none'}), some of {', '.join(started) or 'none'}. The predictions are "
            "judged on what has run so far.",
            "",
        ]
    lines += ["Predictions (configs/skills.py PREDICTIONS, written before any run):", ""]
    lines += ["| prediction | status | numbers |", "|---|---|---|"]
    lines += [f"| {p['text']} | {p['status']} | {p['detail']} |" for p in results["prediction_status"]]
    by_cell = skills_stats.cells(results["runs"])
    routes = skills_stats.routing_by_target(results["routing"])
    own = source_own_share(results)
    sizes = sorted({r["num_train"] for r in results["runs"]})
    methods = list(dict.fromkeys(r["method"] for r in results["runs"]))
    for stratum in dict.fromkeys(t["stratum"] for t in results["targets"]):
        names = [t["target"] for t in results["targets"] if t["stratum"] == stratum]
        columns = [(m, n) for m in methods for n in sizes if any((t, m, n) in by_cell for t in names)]
        lines += [
            "",
            f"Stratum {stratum}: test exact match, mean +- std over seeds (n = 0: before any target step). Routing "
            "beside its ceiling: the share of the source skill's own test instances that choose its majority vector.",
            "",
        ]
        header = "| target | routing | source's own | "
        lines.append(header + " | ".join(f"{premise_title(m)} n={n}" for m, n in columns) + " |")
        lines.append("|---|---|---|" + "---|" * len(columns))
        for t in names:
            row = [_mean_std(by_cell.get((t, m, n))) for m, n in columns]
            lines.append(f"| {t} | {routes[t]:.2f} | {own[t]:.2f} | " + " | ".join(row) + " |")
    lines += ["", "Paired differences SharPT - other, per seed, mean and 95% t interval:", ""]
    lines += ["| stratum | target | n | other | seeds | mean | 95% interval |", "|---|---|---|---|---|---|---|"]
    for r in results["paired"]:
        lines.append(
            f"| {r['stratum']} | {r['target']} | {r['num_train']} | {premise_title(r['other'])} | {r['seeds']} "
            f"| {r['mean']:+.1f} | [{r['low']:+.1f}, {r['high']:+.1f}] |"
        )
    lines += _source_lines(results)
    trained = [r for r in results["runs"] if r["num_train"] > 0 and r.get("best_step") is not None]
    last = sum(r["best_step"] == r["last_step"] for r in trained)
    diverged = sum("diverged" in r for r in results["runs"])
    lines += ["", f"Runs whose best checkpoint is their last: {last} of {len(trained)}; diverged runs: {diverged}."]
    lines += ["", f"Protocol: {results['protocol']}. Wall time {results['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def _source_lines(results: dict) -> list[str]:
    """The source stage per (start, seed): each source's validation at the last two evaluations and its test."""
    skills = [t.name for t in skills_world.SOURCES]
    lines = [
        "",
        "Source stage: per-source validation at the last two evaluations (plateau) -> (test), exact match; the "
        "codebook on the 8 source tasks' test instances: purity, skill perplexity (8 = one vector per skill), dead "
        "vectors (of K).",
        "",
    ]
    header = ["start", "seed", *skills, "purity", "perplexity", "dead"]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for source in results["sources"]:
        steps = sorted(source["validation_curve"], key=int)[-2:]
        cells = []
        for skill in skills:
            curve = " -> ".join(f"{source['validation_curve'][s][skill]:.0f}" for s in steps)
            cells.append(f"{curve} ({source['test'][skill]:.0f})")
        m = contingency_measures(np.asarray([source["counts"][skill] for skill in skills]))
        cells += [f"{m['purity']:.2f}", f"{m['skill_perplexity']:.1f}", str(m["dead_skills"])]
        lines.append(f"| {source['start']} | {source['seed']} | " + " | ".join(cells) + " |")
    return lines


def source_own_share(results: dict) -> dict[str, float]:
    """Target -> the routing its source skills reach on their own test instances (mean over seeds and skills): the
    share that choose the skill's majority vector. Routing counts only that vector, so a source that splits its
    instances over two vectors caps its targets' routing below 1; NaN for a target without source skills."""
    shares = {}  # (seed, skill) -> share
    for source in results["sources"]:
        if source["start"] == "sharpt":
            for skill, counts in source["counts"].items():
                shares[source["seed"], skill] = max(counts) / max(sum(counts), 1)
    out = {}
    for t in results["targets"]:
        values = [shares[s, k] for s in t["seeds"] for k in t["skills"] if (s, k) in shares]
        out[t["target"]] = float(np.mean(values)) if values else NAN
    return out


def _mean_std(cell: dict | None) -> str:
    if not cell:
        return ""
    values = np.array(list(cell.values()), np.float64)
    return f"{values.mean():.1f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:.1f}"


def premise_title(method: str) -> str:
    return PREMISE_TITLES.get(method) or title(method)


def plot_gain_vs_routing(results: dict, out: Path) -> None:
    """Per target (mean over seeds): SharPT's step-0 score, and its gain over no source training at each size,
    against routing; one colour per stratum."""
    by_cell = skills_stats.cells(results["runs"])
    routes = skills_stats.routing_by_target(results["routing"])
    sizes = sorted({r["num_train"] for r in results["runs"] if r["num_train"] > 0})
    panels = {"SharPT at step 0": {}, **{f"SharPT - no source training, n={n}": {} for n in sizes}}
    for t in results["targets"]:
        name, x = t["target"], routes[t["target"]]
        if np.isnan(x):
            continue
        step0 = skills_stats.mean_test(by_cell.get((name, "sharpt", 0)))
        panels["SharPT at step 0"].setdefault(t["stratum"], []).append((x, step0, name))
        for n in sizes:
            gain = skills_stats.mean_test(by_cell.get((name, "sharpt", n)))
            gain -= skills_stats.mean_test(by_cell.get((name, "no_source", n)))
            if not np.isnan(gain):
                panels[f"SharPT - no source training, n={n}"].setdefault(t["stratum"], []).append((x, gain, name))
    plots.scatter(panels, out, xlabel="routing (share to the source skill's vector)", ylabel="test exact match")
