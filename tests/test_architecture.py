"""The import direction of docs/architecture.md, checked on the source.

Every module of ``explistops_jax`` sits in one layer of :data:`LAYERS`; a module
may import (at the top or inside a function) modules of its own layer or lower
ones, never a higher one, and the imports form no cycle. Only the entry points
and the way in (runtime, gin_config) import ``seqio_tasks`` (tasks are brought in
by name). A new module must be placed in a layer here and in docs/architecture.md.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "explistops_jax"

# Lowest first. Within a layer, modules are independent ideas side by side.
LAYERS: list[set[str]] = [
    {"errors"},
    {"rundir", "listops", "listops.tree", "listops.sampler", "listops.readers", "tf_loader",
     "distributed"},
    {"data"},
    {"explain"},
    {"task_spec", "scoring", "vocab", "domain_vocab", "features", "tfds_builder"},
    {"own_tasks", "file_tasks", "t5_config", "cpu_kernels", "layers", "network", "decoding",
     "optimizers", "partitioning", "summaries"},
    {"model"},
    {"checkpoints", "checkpoints.common", "checkpoints.hf", "checkpoints.hub",
     "checkpoints.native", "checkpoints.t5x"},
    {"train_state", "grain_pipeline", "seqio_backend", "backends", "run_info"},
    {"train_step", "input_pipeline", "lengths"},
    {"plan", "evaluator", "throughput"},
    {"trainer", "predict"},
    {"study", "gin_writer", "dry_run", "reproduce", "report", "report.runs", "report.statistics", "report.published",
     "report.findings", "report.markdown", "report.plots"},
    {"runtime", "gin_config", "launcher"},
    {"cli", "train", "eval", "commands"},  # entry points; commands.* join this layer
]
ENTRY = len(LAYERS) - 1
WAY_IN = ENTRY - 1  # runtime and gin_config bring tasks in by name for the entry points


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    out.pop("", None)  # the package's own __init__ (version only)
    return out


def _layer(name: str) -> int:
    if name.startswith("commands"):
        return ENTRY
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"explistops_jax.{name} is in no layer: add it to LAYERS in "
                         "tests/test_architecture.py and to docs/architecture.md")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules (and 'seqio_tasks') a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "seqio_tasks":
                found.add("seqio_tasks")
            elif name.startswith("explistops_jax."):
                inner = name[len("explistops_jax."):]
                # `from pkg import sub` imports the module sub when there is one
                if inner in modules:
                    found.add(inner)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = _imports(path, modules) - {name}
        # `from explistops_jax.x import f` names both x and x.f; keep the module
        graph[name] = {d for d in deps if not any(
            d != other and other.startswith(d + ".") and other in deps
            and d not in modules for other in deps)}
    return graph


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_no_module_imports_a_higher_layer():
    bad = []
    for name, deps in _graph().items():
        for dep in deps:
            if dep == "seqio_tasks":
                if _layer(name) < WAY_IN:
                    bad.append(f"{name} imports seqio_tasks (only the way in may)")
            elif _layer(dep) > _layer(name) and not (dep.startswith(name + ".")
                                                     or name.startswith(dep + ".")):
                bad.append(f"{name} (layer {_layer(name)}) imports {dep} (layer {_layer(dep)})")
    assert not bad, "\n".join(sorted(bad))


def test_imports_form_no_cycle():
    """Depth-first search over the module graph; a package and its own
    submodules (``__init__`` re-exports) are one node."""
    def node(name: str) -> str:
        return name.split(".")[0] if name.split(".")[0] in ("listops", "checkpoints",
                                                            "report") else name

    edges: dict[str, set[str]] = {}
    for name, deps in _graph().items():
        edges.setdefault(node(name), set()).update(
            node(d) for d in deps if d != "seqio_tasks" and node(d) != node(name))
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)


def test_the_checker_sees_a_violation(tmp_path):
    """The import reader finds function-level imports and `from pkg import mod`."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from explistops_jax import trainer\n"
                      "import seqio_tasks\n")
    assert _imports(source, {"trainer": Path()}) == {"trainer", "seqio_tasks"}
