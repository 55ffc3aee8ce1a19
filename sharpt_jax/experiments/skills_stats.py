"""The premise test's numbers (sharpt_jax/experiments/skills_premise.py): cells, paired statistics and the
pre-registered predictions (configs/skills.py PREDICTIONS), each checked and reported as held or failed.

Records are those of results.json: {stratum, target, method, seed, num_train, test, validation, routing,
selected, ...}; num_train 0 is the step-0 score. Only selected records (the chosen rate) enter the statistics.
"""

import numpy as np
from scipy import stats

HELD, FAILED, UNTESTED = "held", "failed", "not tested"


def cells(runs: list[dict]) -> dict[tuple, dict[int, float]]:
    """{(target, method, num_train): {seed: test}} of the selected records."""
    out = {}
    for r in runs:
        if r["selected"]:
            out.setdefault((r["target"], r["method"], r["num_train"]), {})[r["seed"]] = r["test"]
    return out


def mean_test(cell: dict[int, float] | None) -> float:
    return float(np.mean(list(cell.values()))) if cell else float("nan")


def paired(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> dict:
    """Per-seed differences a - b over the seeds both have: mean, its `level` t interval, the seeds used."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], np.float64)
    out = {"seeds": len(seeds), "mean": float(d.mean()) if len(d) else float("nan")}
    if len(d) > 1:
        half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        out.update(low=float(d.mean() - half), high=float(d.mean() + half))
    else:
        out.update(low=float("nan"), high=float("nan"))
    return out


def paired_table(runs: list[dict], reference: str = "sharpt") -> list[dict]:
    """For every (target, size > 0) and every other method: SharPT minus that method, per seed, with its interval."""
    by_cell, strata = cells(runs), {r["target"]: r["stratum"] for r in runs}
    rows = []
    for (target, method, size), cell in by_cell.items():
        if method == reference or size == 0 or (target, reference, size) not in by_cell:
            continue
        row = paired(by_cell[target, reference, size], cell)
        rows.append({"stratum": strata[target], "target": target, "num_train": size, "other": method, **row})
    return rows


def routing_by_target(routing: list[dict]) -> dict[str, float]:
    """Mean routing over seeds per target (NaN for a target without source skills)."""
    out = {}
    for r in routing:
        out.setdefault(r["target"], []).append(r["routing"])
    return {t: float(np.mean(v)) for t, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The predictions: one function per `check` of configs/skills.py PREDICTIONS.
# ---------------------------------------------------------------------------------------------


def _source_skills(results: dict, target: str) -> list[str]:
    return next(r["skills"] for r in results["targets"] if r["target"] == target)


def _eligible(results: dict, prediction: dict) -> list[str]:
    """The stratum's targets whose source skills all reach `min_source_validation` (last validation, seed mean)."""
    last = {}
    for source in results["sources"]:
        if source["start"] == "sharpt" and source["validation_curve"]:
            final = source["validation_curve"][max(source["validation_curve"], key=int)]
            for skill, value in final.items():
                last.setdefault(skill, []).append(value)
    ok = {skill for skill, values in last.items() if np.mean(values) >= prediction["min_source_validation"]}
    stratum = [t["target"] for t in results["targets"] if t["stratum"] == prediction["stratum"]]
    return [t for t in stratum if set(_source_skills(results, t)) <= ok]


def step0_near_source(results: dict, p: dict) -> tuple[str, str]:
    by_cell, source_test = cells(results["runs"]), _mean_source_test(results)
    lines, ok = [], []
    for target in _eligible(results, p):
        step0 = mean_test(by_cell.get((target, "sharpt", 0)))
        reference = float(np.mean([source_test[s] for s in _source_skills(results, target)]))
        ok.append(abs(step0 - reference) <= p["points"])
        lines.append(f"{target}: step 0 {step0:.1f} vs source {reference:.1f}")
    return _verdict(ok, lines)


def paired_gain(results: dict, p: dict) -> tuple[str, str]:
    by_cell, lines, ok = cells(results["runs"]), [], []
    for target in _eligible(results, p):
        for other in p["others"]:
            if (target, other, p["size"]) not in by_cell or (target, "sharpt", p["size"]) not in by_cell:
                continue
            d = paired(by_cell[target, "sharpt", p["size"]], by_cell[target, other, p["size"]])
            ok.append(d["mean"] >= p["points"] and d["low"] > 0)
            lines.append(f"{target} - {other}: {d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]")
    return _verdict(ok, lines)


def mixed_target(results: dict, p: dict) -> tuple[str, str]:
    by_cell = cells(results["runs"])
    pt, sharpt = (mean_test(by_cell.get((p["target"], m, p["size"]))) for m in ("prompt_tuning", "sharpt"))
    if np.isnan(pt) or np.isnan(sharpt):
        return UNTESTED, f"{p['target']} at {p['size']} examples not run"
    held = pt <= p["prompt_tuning_max"] and sharpt >= p["sharpt_min"]
    return (HELD if held else FAILED), f"PromptTuning {pt:.1f}, SharPT {sharpt:.1f}"


def spearman(results: dict, p: dict) -> tuple[str, str]:
    by_cell, routes = cells(results["runs"]), routing_by_target(results["routing"])
    stratum = [t["target"] for t in results["targets"] if t["stratum"] == p["stratum"]]
    x = [routes[t] for t in stratum]
    step0 = [mean_test(by_cell.get((t, "sharpt", 0))) for t in stratum]
    gain = [
        mean_test(by_cell.get((t, "sharpt", p["size"]))) - mean_test(by_cell.get((t, "no_source", p["size"])))
        for t in stratum
    ]
    if len(stratum) < 3 or np.isnan(step0 + gain).any():
        return UNTESTED, f"{len(stratum)} target(s) of stratum {p['stratum']} with every score"
    rho_step0, rho_gain = stats.spearmanr(x, step0).statistic, stats.spearmanr(x, gain).statistic
    held = rho_step0 > p["min_rho"] and rho_gain > p["min_rho"]
    return (HELD if held else FAILED), f"rho(routing, step 0) {rho_step0:.2f}, rho(routing, gain) {rho_gain:.2f}"


def no_advantage(results: dict, p: dict) -> tuple[str, str]:
    rows = [r for r in paired_table(results["runs"]) if r["stratum"] == p["stratum"] and r["other"] == "no_source"]
    by_cell, lines, ok = cells(results["runs"]), [], []
    for r in rows:
        ok.append(not r["low"] > 0)
        lines.append(f"{r['target']} n={r['num_train']}: {r['mean']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}]")
    for t in dict.fromkeys(r["target"] for r in rows):
        step0 = mean_test(by_cell.get((t, "sharpt", 0)))
        ok.append(step0 <= p["step0_max"])
        lines.append(f"{t} step 0 {step0:.1f}")
    return _verdict(ok, lines)


def replay(results: dict, p: dict) -> tuple[str, str]:
    del p
    by_seed = {s["seed"]: s["test"] for s in results["sources"] if s["start"] == "sharpt"}
    replays = [r for r in results["runs"] if r["stratum"] == "replay" and r["num_train"] == 0]
    ok = [abs(r["test"] - by_seed[r["seed"]][r["target"]]) < 1e-9 for r in replays]
    lines = [
        f"{r['target']} seed {r['seed']}: {r['test']:.2f} vs {by_seed[r['seed']][r['target']]:.2f}" for r in replays
    ]
    return _verdict(ok, lines)


def routed_step0(results: dict, p: dict) -> tuple[str, str]:
    step0 = {
        (r["target"], r["seed"]): r["test"] for r in results["runs"] if r["method"] == "sharpt" and r["num_train"] == 0
    }
    routed = [r for r in results["routing"] if r["stratum"] == p["stratum"] and r["routing"] >= p["min_routing"]]
    bad = [f"{r['target']} seed {r['seed']}" for r in routed if step0[r["target"], r["seed"]] <= p["step0_max"]]
    if not routed:
        return UNTESTED, f"no {p['stratum']} target with routing >= {p['min_routing']}"
    return (FAILED if bad else HELD), (", ".join(bad) or f"{len(routed)} routed target-seed(s) all above")


def oracle_beats_no_source(results: dict, p: dict) -> tuple[str, str]:
    by_cell, lines, ok = cells(results["runs"]), [], []
    for (target, method, size), cell in sorted(by_cell.items()):
        if method == "sharpt_oracle" and target in p["targets"] and size > 0:
            other = mean_test(by_cell.get((target, "no_source", size)))
            ok.append(mean_test(cell) > other)
            lines.append(f"{target} n={size}: oracle {mean_test(cell):.1f} vs no source {other:.1f}")
    return _verdict(ok, lines)


def offline_routing(results: dict, p: dict) -> tuple[str, str]:
    del p
    mismatches = sum(r["offline_mismatches"] for r in results["routing"])
    return _verdict([mismatches == 0], [f"{mismatches} mismatches over {len(results['routing'])} target-seed(s)"])


def _mean_source_test(results: dict) -> dict[str, float]:
    tests = {}
    for source in results["sources"]:
        if source["start"] == "sharpt":
            for skill, value in source["test"].items():
                tests.setdefault(skill, []).append(value)
    return {skill: float(np.mean(v)) for skill, v in tests.items()}


def _verdict(ok: list[bool], lines: list[str]) -> tuple[str, str]:
    if not ok:
        return UNTESTED, "; ".join(lines) or "no eligible target"
    return (HELD if all(ok) else FAILED), "; ".join(lines)


CHECKS = {
    f.__name__: f
    for f in (
        step0_near_source,
        paired_gain,
        mixed_target,
        spearman,
        no_advantage,
        replay,
        routed_step0,
        oracle_beats_no_source,
        offline_routing,
    )
}


def check_predictions(results: dict) -> list[dict]:
    """Every prediction of results["predictions"] with its status (held / failed / not tested) and numbers."""
    out = []
    for p in results["predictions"]:
        status, detail = CHECKS[p["check"]](results, p)
        out.append({"id": p["id"], "text": p["text"], "status": status, "detail": detail})
    return out
