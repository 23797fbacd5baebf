"""The project's import graph, read from the source with ``ast``: no cycles, and a detector core that
never reaches for a streaming client.

Every import statement counts, including those inside functions (they hide a dependency, they do not
remove it); only ``if TYPE_CHECKING:`` blocks are left out, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "producers", "schemas")
STREAMING_CLIENTS = {"kafka", "redis", "boto3", "botocore", "s3transfer"}


def project_modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's ``__init__``)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_names(name: str, path: Path, is_package: bool, known: dict) -> set[str]:
    """Absolute names imported by one module: project modules where they resolve to one, else as written."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            stem = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            # ``from pkg import sub`` depends on the submodule; ``from pkg import name`` on pkg itself.
            names.update(f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names)
    return names


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between project modules, every imported name) per project module."""
    known = project_modules()
    raw = {name: imported_names(name, path, is_package, known) for name, (path, is_package) in known.items()}
    edges = {}
    for name, targets in raw.items():
        edges[name] = set()
        for target in targets:
            while target and target not in known:  # `import worker.core.x.y` -> the module that exists
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges, raw


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_and_relative_imports_are_edges(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .ghost import G\n"
                      "def f():\n    from .detector import Detector\n    from . import scoring\n")
    known = {"worker.core.detector": None, "worker.core.scoring": None, "worker.core": None}
    names = imported_names("worker.core.bundle", source, False, known)
    assert {"worker.core.detector", "worker.core.scoring"} <= names and "worker.core.ghost" not in names


def test_no_import_cycles():
    edges, _ = import_graph()
    assert {"worker.core.bundle", "worker.core.detector", "producers.cli", "schemas.image_ref"} <= set(edges)
    assert cycles(edges) == [], "modules that import each other (directly or through others)"


def test_the_bundle_format_does_not_know_the_detector():
    edges, _ = import_graph()
    assert "worker.core.detector" not in edges["worker.core.bundle"]
    assert "worker.core.bundle" in edges["worker.core.detector"]


def test_detector_core_imports_no_streaming_client_and_no_pipeline():
    edges, raw = import_graph()
    core = [name for name in edges if name == "worker.core" or name.startswith("worker.core.")]
    assert len(core) > 10
    for name in core:
        clients = {n for n in raw[name] if n.split(".")[0] in STREAMING_CLIENTS}
        assert not clients, f"{name} imports {sorted(clients)}"
        outside = {t for t in edges[name] if not t.startswith("worker.core")}
        assert not outside, f"{name} imports {sorted(outside)} from outside the detector core"
