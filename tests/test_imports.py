"""No import cycles inside the ``tdsk`` package (``tdsk.kernels`` included).

The graph is built from the source alone (``ast``, nothing is imported): one node per
module under ``tdsk/`` and under the top-level ``kernels/`` folder, which installs as
``tdsk.kernels`` (``package_dir`` in setup.py). An edge ``a -> b`` is any import of
``b`` written in ``a``: module-level, inside a function or a ``try``, relative imports
resolved, and ``importlib.import_module("literal")``. ``from p import name`` is an
edge to ``p.name`` when that is a module, else to ``p``. Importing a submodule also
runs its parent packages' ``__init__``; those implicit edges are not counted (they
would turn every ``from tdsk.models.x import ...`` inside ``tdsk/models`` into a
cycle through ``tdsk/models/__init__.py``).
"""
import ast
import os
from typing import Dict, List, Optional, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_py():
    with open(os.path.join(ROOT, "setup.py")) as f:
        return ast.parse(f.read())


def _package_dirs() -> Dict[str, str]:
    """``{package: folder}``: ``tdsk`` plus setup.py's ``package_dir`` entries."""
    dirs = {"tdsk": os.path.join(ROOT, "tdsk")}
    for node in ast.walk(_setup_py()):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            for pkg, folder in ast.literal_eval(node.value).items():
                dirs[pkg] = os.path.join(ROOT, folder)
    assert "tdsk.kernels" in dirs, "setup.py no longer maps tdsk.kernels to a folder: update this test"
    return dirs


def _extension_modules() -> List[str]:
    """Compiled modules setup.py builds (``CppExtension("tdsk._C", ...)``): leaves of the graph."""
    names = []
    for node in ast.walk(_setup_py()):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")).endswith("Extension")
                and node.args and isinstance(node.args[0], ast.Constant)):
            names.append(node.args[0].value)
    assert "tdsk._C" in names, "setup.py no longer builds tdsk._C: update this test"
    return names


def _modules() -> Dict[str, tuple]:
    """``{dotted name: (path, is_package)}`` of every module of the installed tree."""
    mods = {}
    for pkg, folder in _package_dirs().items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            rel = os.path.relpath(dirpath, folder)
            parts = [pkg] + ([] if rel == "." else rel.split(os.sep))
            if "__init__.py" not in filenames:
                continue
            for fn in sorted(filenames):
                if not fn.endswith(".py"):
                    continue
                if fn == "__init__.py":
                    mods[".".join(parts)] = (os.path.join(dirpath, fn), True)
                else:
                    mods[".".join(parts + [fn[:-3]])] = (os.path.join(dirpath, fn), False)
    for name in _extension_modules():
        mods.setdefault(name, (None, False))
    return mods


def _resolve_relative(module: str, is_package: bool, level: int, name: Optional[str]) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> Dict[str, Dict[str, int]]:
    """``{module: {imported module: line}}`` for the modules of tdsk."""
    mods = _modules()
    graph: Dict[str, Dict[str, int]] = {}
    for module, (path, is_package) in mods.items():
        if path is None:  # compiled extension
            graph[module] = {}
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        edges: Dict[str, int] = {}

        def add(target: str, line: int) -> None:  # keep the first line importing ``target``
            edges[target] = min(line, edges.get(target, line))

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                src = (_resolve_relative(module, is_package, node.level, node.module) if node.level
                       else node.module)
                for alias in node.names:
                    sub = f"{src}.{alias.name}"
                    add(sub if sub in mods else src, node.lineno)
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                fn = node.func
                fname = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
                if fname in ("import_module", "__import__"):
                    add(node.args[0].value, node.lineno)
        graph[module] = {t: line for t, line in edges.items() if t in mods and t != module}
    return graph


def strongly_connected(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """The strongly connected components of more than one module (each sorted)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    sccs: List[List[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan (the graph is small: recursion is fine)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sccs


def find_cycles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """One shortest cycle (``[a, b, ..., a]``) through the first module of each component."""
    cycles = []
    for comp in strongly_connected(graph):
        members = set(comp)
        start = comp[0]
        # Shortest path back to ``start`` inside the component (BFS).
        prev = {start: None}
        queue, found = [start], None
        while queue and found is None:
            nxt = []
            for v in queue:
                for w in sorted(graph[v]):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            queue = nxt
        path = []
        v = found
        while v is not None and v != start:
            path.append(v)
            v = prev[v]
        cycles.append([start] + path[::-1] + [start])
    return cycles


def _describe(graph, cycle: List[str]) -> str:
    return _describe_edges(graph, list(zip(cycle, cycle[1:])))


def _describe_edges(graph, edges) -> str:
    return "\n".join(f"    {a} -> {b}  ({_modules_path(a)}:{graph[a][b]})" for a, b in edges)


def _modules_path(module: str) -> str:
    return os.path.relpath(_modules()[module][0], ROOT)


def test_graph_sees_the_whole_package():
    graph = import_graph()
    assert "tdsk.kernels" in graph and "tdsk.kernels._common" in graph
    assert "tdsk.models.factory" in graph and "tdsk.engine.trainer" in graph
    # function-level and importlib imports are edges too
    assert "tdsk.kernels" in graph["tdsk.ops._backends"]
    assert "tdsk.kernels._common" in graph["tdsk.kernels.frame_diff_concat"]  # relative import
    # importlib.import_module("tdsk._C") is an edge to the compiled extension, not to tdsk
    assert "tdsk._C" in graph["tdsk.ops._backends"] and "tdsk" not in graph["tdsk.ops._backends"]


def test_layers():
    graph = import_graph()
    # checkpoint file I/O is a leaf both the model layer and the engine build on
    assert set(graph["tdsk._checkpoint_io"]) <= {"tdsk._io"}  # atomic writes only
    assert "tdsk._checkpoint_io" in graph["tdsk.engine.checkpoint"]
    # (the model layer never reaching up into the engine is an import-linter contract, below)


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"f": 5}, "f": {"e": 6}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    parts = []
    for cycle, comp in zip(cycles, strongly_connected(graph)):
        inside = [(a, b) for a in comp for b in sorted(graph[a]) if b in comp]
        parts.append(f"cycle {' -> '.join(cycle)}:\n{_describe(graph, cycle)}\n"
                     f"  all {len(inside)} edges among {comp}:\n{_describe_edges(graph, inside)}")
    report = "\n".join(parts)
    if cycles:
        print(report)
    assert not cycles, f"import cycles inside tdsk:\n{report}"


def test_layer_contracts_hold():
    """The layer contracts of pyproject.toml ([tool.importlinter]: the library never imports
    tdsk.cli, the model layer never the engine), checked by import-linter itself."""
    import subprocess
    import sys

    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "0 broken" in out, out[-4000:]
    assert "Contracts: 2 kept" in out, out[-2000:]


def test_tools_run_from_a_folder_that_holds_a_clone_named_tdsk(tmp_path):
    """There Python can take the clone for a namespace package ``tdsk``: the tools must still run
    under their old and new paths (export failed with "cannot import name '__version__'")."""
    import subprocess
    import sys

    (tmp_path / "tdsk" / "tdsk").mkdir(parents=True)  # a clone's root: no __init__.py in it
    for mod in ("tdsk.export", "tdsk.train", "tdsk.cli.predict", "tdsk.data.check"):
        res = subprocess.run([sys.executable, "-m", mod, "--help"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0 and "usage:" in res.stdout, (mod, res.stderr[-2000:])
    code = "from tdsk._version import version; from tdsk.cli.export import export_metadata; print(version())"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip(), res.stderr[-2000:]
