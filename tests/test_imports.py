"""The package's layers: no import circle among its own modules (imports inside functions
count: they are the same dependency, only later), the library never imports the training
scripts, and the fast parser dispatches through an explicit table."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Module name -> file; ``training/`` is installed as ``hf_landmark.training``.
FOLDERS = {"hf_landmark": ROOT / "hf_landmark", "hf_landmark.training": ROOT / "training"}


def _modules() -> dict[str, Path]:
    found = {"hf_landmark_cli": ROOT / "hf_landmark_cli.py"}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    base = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                module = f"{anchor}.{node.module}" if node.module else anchor
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule when there is one.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _descends(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_package_has_no_import_circle():
    graph = _graph()
    # A package's __init__ re-exports its modules; a module importing its own package's names
    # from the __init__ is the usual idiom, not a layer climbing up: those edges are left out.
    graph = {
        m: {t for t in ts if not (_modules()[t].name == "__init__.py" and _descends(m, t))} for m, ts in graph.items()
    }
    assert _cycles(graph) == []


def test_the_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_never_imports_the_training_scripts():
    graph = _graph()
    climbs = {
        m: sorted(t for t in ts if _descends(t, "hf_landmark.training"))
        for m, ts in graph.items()
        if _descends(m, "hf_landmark") and not _descends(m, "hf_landmark.training")
    }
    assert {m: ts for m, ts in climbs.items() if ts} == {}  # (the package itself loads them by name, on first use)


def test_every_subcommand_has_its_handler():
    import hf_landmark_cli
    from hf_landmark.cli import COMMANDS

    parser = hf_landmark_cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) - set(hf_landmark_cli.TRAINING) == set(COMMANDS)
