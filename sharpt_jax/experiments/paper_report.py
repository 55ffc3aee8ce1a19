"""The paper's tables and figures from a folder of runs, with the paper's numbers beside ours.

    python -m sharpt_jax.report --runs RUNS_DIR --out OUT_DIR

A run is any folder under RUNS_DIR that holds `config.json` and `eval/best.json` (run.py's train and eval modes
write them; scripts/reproduce.py lays out the paper's runs, the demo its stages). Each run is classified by
  method    its config's method: SharPT or "no latent space" (a target run started from a source run),
            PromptTuning, ModelTuning, "no source training" (method no_source: configs/target.py:TASK,
            method=no_source), or "<method> (source stage)" for a run in the source stage of a method that
            transfers (SharPT, no latent space) or on several tasks (a source mixture); then its departures
  departures  where the codebook the run uses was trained with other settings than the paper's
            (`methods.PAPER_CODEBOOK`: a random start, no dead-skill restarts), read from the config of the run
            that trained it (the run itself, or for a target run its source run): "SharPT (codebook_init=kmeans)"
            is a row of its own beside the paper-start "SharPT" (configs/common.py starts by k-means; the paper's
            start is --config.codebook_init=random); a target run whose source run is gone is "codebook unknown"
  setting   for a target run with a source: the task of its source run (the `config.json` in its
            `source_checkpoint`, "source_" dropped): high_to_low (Tables 1 and 3), category (Table 2), any
            mixture; runs without a source (the baselines, "no source training") join every setting's table
            of their size and protocol, and have a table of their own when no setting covers their tasks
  size      the config's `size` (configs/source_mix.py and target.py set it: small, base, large, xl, xxl),
            "random" for a random T5, else the name of the T5 folder or hub id
  protocol  best.json's "protocol" (scoring and split protocol, "unknown" where missing): runs of two
            protocols never share a table or a curve
  task, seed
A run's number for a task is the test score of its best-validation checkpoint: the mean of the task's metrics
(best.json's "score", or the mean of the "<task>/<metric>" entries of a run on several tasks), as the paper's
tables report one number per task.

Writes to OUT_DIR:
  results.md           one table per (setting, size, protocol): rows by method (and departures), columns by task
                       and Avg, cells "mean +- std (n)" over seeds (sample std; "mean (1)" for one seed); under
                       the rows of a method the paper's, where the table is one of the paper's (T5-base and its
                       tasks). Avg is over seeds that have every column.
  results.csv          setting,size,protocol,method,task,mean,std,n,paper: one line per cell (task "Avg" too;
                       method as in results.md, e.g. "sharpt (codebook_init=kmeans)"; paper: the paper's number
                       for the method)
  task_relations.png   the paper's Figure 3: cosine similarity between tasks' average one-hot skill choices, on
                       the test split at the best step, for one SharPT source run and the targets trained from it
                       (the family with the most tasks; skill indices mean nothing across source runs)
  skill_usage.png      the same choices per task, as fractions of its test examples per skill vector
  figure2.png          the paper's Figure 2, only when the runs hold several sizes: Avg per size and method
"""

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np

from sharpt_jax import storage
from sharpt_jax.experiments import plots
from sharpt_jax.models import methods as method_table

# The paper's numbers (Pang et al., Tables 1-3; T5-base LM-adapted), one score per task: the setting each table
# belongs to, its columns in the paper's order, and one row per method of ours (keys of method_table.METHODS).
PAPER_TABLES = {
    1: (
        "high_to_low",
        ("boolq", "cb", "cola", "copa", "cr", "mrpc", "rte", "stsb", "wic", "wsc"),
        {
            "model_tuning": (81.4, 94.0, 51.1, 71.2, 94.1, 87.5, 81.5, 89.4, 68.3, 80.8),
            "prompt_tuning": (73.0, 92.7, 52.9, 56.7, 93.5, 86.1, 68.7, 88.1, 63.6, 71.5),
            "sharpt": (78.9, 94.6, 58.2, 67.0, 94.5, 89.7, 79.4, 89.1, 68.8, 81.6),
        },
    ),
    2: (
        "category",
        ("copa", "cb", "rte", "wsc", "wic"),
        {
            "model_tuning": (71.2, 94.0, 81.5, 80.8, 68.3),
            "prompt_tuning": (56.7, 92.7, 68.7, 71.5, 63.6),
            "sharpt": (65.0, 94.6, 79.4, 79.0, 69.8),
        },
    ),
    3: (
        "high_to_low",
        ("boolq", "cb", "cola", "copa"),
        {
            "sharpt": (78.9, 94.6, 58.2, 67.0),
            "no_source": (64.3, 89.3, 10.3, 58.0),
            "no_latent": (67.9, 82.4, 17.6, 61.0),
        },
    ),
}
PAPER_SIZE = "base"
METHOD_ORDER = ("model_tuning", "prompt_tuning", "sharpt", "no_latent", "no_source")
SIZE_ORDER = ("small", "base", "large", "xl", "xxl")  # The LM-adapted T5 sizes (configs/common.py T5_LM_ADAPT).
NO_SETTING = ""  # The setting of runs without a source stage.


class ReportError(ValueError):
    """No runs, or a file that cannot be read; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Run:
    path: storage.Path
    method: str  # The row: a key of method_table.METHODS, then "(source stage; <departures>)" where they apply.
    setting: str  # "high_to_low", ..., NO_SETTING, or "source stage: <task>" for a run on several tasks.
    size: str
    protocol: str
    seed: int
    step: int  # The best validation step.
    scores: dict  # {task: test score at that step}
    source: storage.Path | None  # The source run of a target run.


def read_json(path: storage.Path):
    """The content of a JSON file, or ReportError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: cannot read it ({err})") from err


def find_runs(runs_dir: storage.Path) -> tuple[list[Run], list[str]]:
    """The scored runs under runs_dir, and a note for every folder left out (not scored, no test split)."""
    runs, notes = [], []
    for config_file in storage.files(runs_dir, "config.json"):
        folder = config_file.parent
        if not (folder / "eval" / "best.json").exists():
            if (folder / "checkpoints").is_dir():  # Else a model folder's config.json, not a run.
                notes.append(f"{folder}: not scored (no eval/best.json; score it with --config.mode=eval)")
            continue
        try:
            run = classify(folder, read_json(config_file), read_json(folder / "eval" / "best.json"))
        except (KeyError, TypeError) as err:
            raise ReportError(f"{folder}: config.json or eval/best.json lacks the field {err}") from err
        if run.scores:
            runs.append(run)
        else:
            notes.append(f"{folder}: its best.json has no test scores")
    if not runs:
        raise ReportError(
            f"no runs under {runs_dir}: a run is a folder with config.json and eval/best.json "
            "(python run.py --config=... --workdir=DIR, then the same with --config.mode=eval)"
        )
    return runs, notes


def classify(folder: storage.Path, config: dict, best: dict) -> Run:
    """The run's method, setting, size, protocol, seed and test scores (see the module docstring)."""
    test = best.get("test") or {}
    tasks = sorted({key.split("/")[0] for key in test if "/" in key})
    if tasks:  # A run on several tasks: each task's score is the mean of its metrics.
        scores = {t: float(np.mean([v for k, v in test.items() if k.startswith(t + "/")])) for t in tasks}
    else:
        scores = {config["task"].removeprefix("sharpt_"): test["score"]} if test else {}
    method, source, qualifiers = config["method"], None, []
    codebook_config = config  # The config of the run that trained the codebook this run uses.
    if tasks or (config["stage"] == "source" and method_table.get(method).transferred is not None):
        qualifiers, setting = ["source stage"], "source stage: " + config["task"]
    elif config.get("source_checkpoint") and config["stage"] == "target":
        source = storage.path(config["source_checkpoint"])  # If relative: to the directory run.py ran in, as here.
        source_config = source / "config.json"
        if source_config.exists():
            codebook_config = read_json(source_config)
            setting = codebook_config["task"].removeprefix("sharpt_").removeprefix("source_")
        else:
            print(f"warning: {folder}: its source run {source} is gone; setting named after it", file=sys.stderr)
            codebook_config, setting = None, f"source {source}"
    else:
        setting = NO_SETTING
    qualifiers += departures(method, codebook_config)
    method = f"{method} ({'; '.join(qualifiers)})" if qualifiers else method
    protocol = best.get("protocol")
    protocol = "unknown" if protocol is None else "; ".join(f"{k} {v}" for k, v in sorted(protocol.items()))
    size, seed = size_of(config), int(config["seed"])
    return Run(folder, method, setting, size, protocol, seed, int(best["step"]), scores, source)


def departures(method: str, codebook_config: dict | None) -> list[str]:
    """["codebook_init=kmeans", ...]: the codebook settings of `codebook_config` (the run that trained the codebook;
    None: that run is gone) that differ from the paper's; [] for a method without a codebook. A config from before
    a setting existed counts as the paper's value."""
    if not method_table.get(method).has_codebook:
        return []
    if codebook_config is None:
        return ["codebook unknown"]
    return [
        f"{field}={codebook_config[field]}"
        for field, paper in method_table.PAPER_CODEBOOK.items()
        if codebook_config.get(field, paper) != paper
    ]


def size_of(config: dict) -> str:
    """The config's `size` ('large'); 'random' for a random T5; else the T5 folder's or hub id's name."""
    if config["t5"] == "random":
        return "random"
    return config.get("size") or Path(config["t5"].rstrip("/")).name


def base_method(method: str) -> str:
    """ "sharpt (codebook_init=kmeans)" -> "sharpt": the key of the method table and of the paper's rows."""
    return method.partition(" ")[0]


def method_name(method: str) -> str:
    """ "sharpt" -> "SharPT"; "sharpt (source stage)" -> "SharPT (source stage)" (the method table's titles)."""
    base, _, rest = method.partition(" ")
    title = method_table.METHODS[base].title if base in method_table.METHODS else base
    return " ".join([title, rest]).strip()


def _rank(order: tuple, name: str) -> tuple:
    return (order.index(name), "") if name in order else (len(order), name)


# ---------------------------------------------------------------------------------------------
# Tables: {(setting, size, protocol): {method: {task: {seed: (score, run folder)}}}}.
# ---------------------------------------------------------------------------------------------


def tables_of(runs: list[Run]) -> dict:
    """Groups the runs' scores into tables. A run without a setting joins every target setting's table of its
    size and protocol (in that table's columns), and a table of its own if some of its tasks are in none."""
    tables = {}

    def add(key: tuple, run: Run, tasks) -> None:
        for task in tasks:
            seeds = tables.setdefault(key, {}).setdefault(run.method, {}).setdefault(task, {})
            if run.seed in seeds:
                raise ReportError(
                    f"{seeds[run.seed][1]} and {run.path} are both seed {run.seed} of {method_name(run.method)} "
                    f"on {task} (T5 {run.size}, protocol {run.protocol}); move one out of the runs folder"
                )
            seeds[run.seed] = (run.scores[task], run.path)

    for run in runs:
        if run.setting != NO_SETTING:
            add((run.setting, run.size, run.protocol), run, run.scores)
    target_tables = {key: set().union(*m.values()) for key, m in tables.items() if not key[0].startswith("source")}
    for run in runs:
        if run.setting == NO_SETTING:
            covered = set()
            for (setting, size, protocol), columns in target_tables.items():
                if (size, protocol) == (run.size, run.protocol):
                    add((setting, size, protocol), run, [t for t in run.scores if t in columns])
                    covered |= columns
            add((NO_SETTING, run.size, run.protocol), run, [t for t in run.scores if t not in covered])
    return tables


def columns_of(methods: dict) -> list[str]:
    """The table's tasks: the paper's in its order, then the others in alphabetical order."""
    tasks = set().union(*methods.values())
    paper_order = [t for _, paper_tasks, _ in PAPER_TABLES.values() for t in paper_tasks if t in tasks]
    return list(dict.fromkeys(paper_order)) + sorted(tasks - set(paper_order))


def summary(values) -> tuple[float, float | None, int]:
    """(mean, sample std (None for one value: it has none), n)."""
    values = np.asarray(list(values), np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None, len(values)


def cells_of(methods: dict, columns: list[str]) -> dict:
    """{method: {task or "Avg": (mean, std, n)}}; Avg over the seeds that have every column."""
    out = {}
    for method in sorted(methods, key=lambda m: (_rank(METHOD_ORDER, base_method(m)), m)):
        by_task = methods[method]
        cells = {t: summary(score for score, _ in by_task[t].values()) for t in columns if t in by_task}
        complete = set.intersection(*(set(by_task.get(t, {})) for t in columns))
        if complete:
            cells["Avg"] = summary(np.mean([by_task[t][s][0] for t in columns]) for s in sorted(complete))
        out[method] = cells
    return out


def paper_cells(setting: str, size: str, columns: list[str]) -> dict:
    """{method: {task or "Avg": the paper's score}} for the columns the paper has (Avg when it has them all)."""
    rows = {}
    if size != PAPER_SIZE:
        return rows
    for paper_setting, tasks, paper in PAPER_TABLES.values():
        for method, values in paper.items():
            # Baselines train no source stage: the paper reports them once, for every setting.
            if setting == paper_setting or (setting == NO_SETTING and method != "sharpt"):
                rows.setdefault(method, {}).update((t, v) for t, v in zip(tasks, values, strict=True) if t in columns)
    for cells in rows.values():
        if len(cells) == len(columns):
            cells["Avg"] = float(np.mean([cells[t] for t in columns]))
    return rows


def table_title(setting: str, size: str, number: int, protocol: str) -> str:
    if setting == NO_SETTING:
        what = "Runs without a source stage"
    elif setting.startswith("source stage"):
        what = "Source stage on " + setting.removeprefix("source stage: ")
    else:
        what = f"Targets of the {setting} source setting"
    return f"{what}, T5 {size} (protocol {number}: {protocol.split(';')[0]})"


def write_tables(tables: dict, out_dir: storage.Path, notes: list[str]) -> None:
    """results.md and results.csv (see the module docstring)."""
    lines = [
        "# Results",
        "",
        "Test score (%) of the best-validation checkpoint (the mean of each task's metrics): mean +- sample std "
        "over seeds (n seeds); Avg over the seeds that have every column. Rows marked (paper): Pang et al., "
        "Tables 1-3 (T5-base).",
    ]
    # Protocol strings are long (the split protocol is a sentence): numbered here, named in the headings.
    protocols = sorted({key[2] for key in tables})
    lines += ["", "Scoring and split protocols (tables never mix two):", ""]
    lines += [f"{i}. {protocol}" for i, protocol in enumerate(protocols, 1)]
    rows = [("setting", "size", "protocol", "method", "task", "mean", "std", "n", "paper")]
    # Target settings first, then the runs without a source stage, then the source stages.
    for (setting, size, protocol), methods in sorted(tables.items(), key=_table_order):
        columns = columns_of(methods)
        paper = paper_cells(setting, size, columns)
        lines += ["", f"## {table_title(setting, size, protocols.index(protocol) + 1, protocol)}", ""]
        lines += ["| method | " + " | ".join(columns) + " | Avg |", "|---|" + "---|" * (len(columns) + 1)]
        table = cells_of(methods, columns)
        order = list(table)
        for i, (method, cells) in enumerate(table.items()):
            ours = [cells.get(t) for t in [*columns, "Avg"]]
            lines.append(f"| {method_name(method)} | " + " | ".join(_cell(c) for c in ours) + " |")
            base = base_method(method)
            theirs = [paper.get(base, {}).get(t) for t in [*columns, "Avg"]]
            # The paper's row under the last of the method's rows (the paper's start, then each departure).
            last_of_method = i + 1 == len(order) or base_method(order[i + 1]) != base
            if last_of_method and any(v is not None for v in theirs):
                text = ["" if v is None else f"{v:.1f}" for v in theirs]
                lines.append(f"| {method_name(base)} (paper) | " + " | ".join(text) + " |")
            for task, cell, value in zip([*columns, "Avg"], ours, theirs, strict=True):
                if cell is not None:
                    rows.append(
                        (setting or "none", size, protocol, method, task, cell[0], "" if cell[1] is None else cell[1])
                        + (cell[2], "" if value is None else value)
                    )
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    storage.write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    table = io.StringIO(newline="")
    csv.writer(table).writerows(rows)
    storage.write_text(out_dir / "results.csv", table.getvalue())


def _table_order(item) -> tuple:
    setting, size, protocol = item[0]
    return setting.startswith("source stage"), setting == NO_SETTING, setting, _rank(SIZE_ORDER, size), protocol


def _cell(cell: tuple | None) -> str:
    if cell is None:
        return ""
    mean, std, n = cell
    return f"{mean:.1f} ({n})" if std is None else f"{mean:.1f} +- {std:.1f} ({n})"


# ---------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------


def plot_sizes(tables: dict, out: storage.Path) -> bool:
    """Figure 2: Avg (error bar: std over seeds) per size and method, one panel per (setting, protocol) that
    has several sizes. Returns whether there was one to draw."""
    curves = {}
    for (setting, size, protocol), methods in tables.items():
        if not setting.startswith("source stage"):
            for method, cells in cells_of(methods, columns_of(methods)).items():
                if "Avg" in cells:
                    curves.setdefault((setting, protocol), {}).setdefault(method, {})[size] = cells["Avg"]
    curves = {k: v for k, v in sorted(curves.items()) if len(set().union(*v.values())) > 1}
    if not curves:
        return False
    sizes = {size for by_method in curves.values() for points in by_method.values() for size in points}
    sizes = sorted(sizes, key=lambda s: _rank(SIZE_ORDER, s))
    panels = {}
    for (setting, protocol), by_method in curves.items():
        panel = panels.setdefault(f"{setting or 'no source stage'} ({protocol.split(';')[0]})", {})
        for method, points in by_method.items():
            cells = sorted((sizes.index(size), mean, std or 0.0) for size, (mean, std, _) in points.items())
            panel[method_name(method)] = cells
    plots.curves(panels, out, xlabel="T5 size", ylabel="Avg test score (%)", xticks=sizes)
    return True


def skill_choices(run: Run) -> dict[str, list[int]]:
    """{task: [K] test examples per skill vector} at the run's best step ({} without eval/skills.json)."""
    path = run.path / "eval" / "skills.json"
    return read_json(path).get(str(run.step), {}).get("test", {}) if path.exists() else {}


def skill_family(runs: list[Run]) -> tuple[str, dict[str, list[int]]] | None:
    """(description, {task: skill counts}) of the SharPT source run whose family (itself and the target runs
    trained from it, which share its frozen codebook) covers the most tasks; None if none covers two."""
    families = {}
    for run in runs:
        if base_method(run.method) != "sharpt":
            continue
        if run.method.startswith("sharpt (source stage"):
            families.setdefault(storage.absolute(run.path), []).insert(0, run)
        elif run.source is not None:
            families.setdefault(storage.absolute(run.source), []).append(run)
    candidates = []
    for source, members in sorted(families.items()):
        counts = {}
        for run in members:
            for task, row in skill_choices(run).items():
                counts[task if task not in counts else f"{task} ({run.path.name})"] = row
        targets = len(members) - (storage.absolute(members[0].path) == source)
        described = f"the SharPT source run {source} (seed {members[0].seed}) and {targets} target runs from it"
        if storage.absolute(members[0].path) != source:
            described += " (its own tasks are missing: score it with --config.mode=eval to add them)"
        candidates.append((described, counts))
    candidates = [c for c in candidates if len(c[1]) > 1]
    return max(candidates, key=lambda c: len(c[1])) if candidates else None


# ---------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------


def write(runs_dir: storage.Path, out_dir: storage.Path) -> list[storage.Path]:
    """Writes the report of every run under runs_dir into out_dir; returns the files written."""
    runs, notes = find_runs(storage.path(runs_dir))
    out_dir = storage.path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = tables_of(runs)
    written = [out_dir / "results.md", out_dir / "results.csv"]
    family = skill_family(runs)
    if family is None:
        notes.append("no task relations: no SharPT source run with scored skill choices on two or more tasks")
    else:
        described, counts = family
        plots.task_relations(counts, out_dir / "task_relations.png")
        title = "Skill usage per task (fraction of test examples)"
        plots.skill_heatmap(list(counts), list(counts.values()), title, out_dir / "skill_usage.png")
        notes.append(f"task_relations.png and skill_usage.png: test examples of {described} (best steps)")
        written += [out_dir / "task_relations.png", out_dir / "skill_usage.png"]
    if plot_sizes(tables, out_dir / "figure2.png"):
        written.append(out_dir / "figure2.png")
    write_tables(tables, out_dir, notes)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, type=storage.path, help="folder searched for runs (recursively)")
    parser.add_argument("--out", required=True, type=storage.path, help="where results.md, results.csv and figures go")
    args = parser.parse_args(argv)
    try:
        written = write(args.runs, args.out)
    except ReportError as err:
        sys.exit(f"error: {err}")
    print((args.out / "results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
