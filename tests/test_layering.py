"""The house's layering, written as data and checked over the import graph of every module (docs/architecture.md).

A module may import modules of its own layer and of the layers below it, never of a layer above; and no group of
modules imports itself in a circle (imports inside functions count: they are what hid the last circle).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module belongs to the first layer with a prefix it equals or extends.
LAYERS = (
    ("storage", ("sharpt_jax.storage",)),  # Every path of the project, local or gs://: tasks read through it too.
    ("models", ("sharpt_jax.models",)),
    ("tasks", ("tasks",)),
    (
        "library",
        (
            "sharpt_jax.errors",
            "sharpt_jax.hf_weights",
            "sharpt_jax.source_stage",
            "sharpt_jax.hf",
            "sharpt_jax.sharding",
            "sharpt_jax.workdir_lock",
            "sharpt_jax.data",
            "sharpt_jax.checkpoints",
            "sharpt_jax.optim",
            "sharpt_jax.decoding",
            "sharpt_jax.scoring",
            "sharpt_jax.embedding_cache",
            "sharpt_jax.codebook_health",
            "sharpt_jax.logs",
            "sharpt_jax.build",
        ),
    ),
    ("programs", ("sharpt_jax.train", "sharpt_jax.evaluate")),
    ("serving", ("sharpt_jax.serving",)),
    ("experiments", ("sharpt_jax.experiments",)),
    (
        "entry points",
        ("run", "configs", "scripts", "bench", "sharpt_jax.export", "sharpt_jax.predict", "sharpt_jax.report"),
    ),
)
PACKAGES = ("sharpt_jax", "tasks", "configs", "scripts", "bench")
# Only these may import configs/ (config files are the command line's business; scripts/reproduce.py prices the
# runs it starts from their configs).
CONFIG_READERS = ("run", "configs", "bench", "scripts")


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs")


def project_modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the project (tests excluded)."""
    files = [ROOT / "run.py"] + [f for p in PACKAGES for f in (ROOT / p).rglob("*.py")]
    modules = {}
    for file in files:
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            if not file.read_text().strip():
                continue  # An empty package marker belongs to no layer.
            parts.pop()
        modules[".".join(parts)] = file
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the project modules it imports}, from every import statement (module level or not)."""
    graph = {}
    for name, file in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from a import b` imports the module a.b where there is one, else a name of module a.
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph` (one per strongly connected group of several modules), by Tarjan's search."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_import_goes_down_or_stays_in_its_layer():
    assert upward_imports(import_graph(project_modules())) == []


def test_no_import_circle():
    assert circles(import_graph(project_modules())) == []


def test_only_the_command_line_reads_config_files():
    graph = import_graph(project_modules())
    readers = [m for m, targets in graph.items() if any(t.startswith("configs") for t in targets)]
    assert [m for m in readers if not m.startswith(CONFIG_READERS)] == []


def test_the_checks_catch_an_upward_import_and_a_circle():
    graph = import_graph(project_modules())
    graph["sharpt_jax.data"] = graph["sharpt_jax.data"] | {"sharpt_jax.train"}
    assert upward_imports(graph) == ["sharpt_jax.data (library) imports sharpt_jax.train (programs)"]
    assert any({"sharpt_jax.data", "sharpt_jax.train"} <= set(circle) for circle in circles(graph))
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("sharpt_jax.new_module")


def test_modules_stay_small():
    """Modules of at most 500 lines (the house style: 150-500)."""
    long = {name: n for name, file in project_modules().items() if (n := len(file.read_text().splitlines())) > 500}
    assert long == {}
