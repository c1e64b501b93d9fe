"""The floor plan, checked on the source: layer rules and no import cycles (AST, no imports run).

Layers, bottom to top (docs/DESIGN.md, "Layers and imports"):

* the **engine** — ``medfm`` without its apps — never imports ``medfm.evaluation`` or the apps,
  and reaches the modality adapters only through the registry (``importlib``, a plug-in point);
* ``medfm.models`` never imports ``medfm.finetune``, ``medfm.train`` or ``medfm.evaluation``;
* ``medfm.modalities`` imports only the engine's contract (:data:`MODALITY_CONTRACT`);
* ``medfm.evaluation`` stands on the engine and the adapters, never on the apps;
* the **apps** (``medfm.cli``, ``medfm.demo``) sit on top: nothing below imports them.

A function-level import of a medfm module is allowed only with a ``# deferred:`` comment that
says why (a heavy optional dependency behind it); a cycle is an error whether or not a
function-level import hides it.

Imports *by name* are edges too, for the cycle check: literal ``import_module("...")`` strings,
the modules a registry entry is declared in (``Registry.declare(name, "...")``) and the submodules
of ``lazy_exports``. They are the plug-in points, so they may reach up a layer (the registries'
loaders in :mod:`medfm.plugins` import the adapters) — but never into a cycle.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"medfm": ROOT / "medfm", "medfm.modalities": ROOT / "modalities",
            "medfm.evaluation": ROOT / "evaluation", "medfm.configs": ROOT / "configs"}
APPS = ("medfm.cli", "medfm.demo", "medfm.__main__")
#: what an adapter may import from the engine: the adapter contract and the shared mechanics it builds on
MODALITY_CONTRACT = ("medfm.modality", "medfm.registry", "medfm.errors", "medfm.limits", "medfm.io",
                     "medfm.input_files", "medfm.config_files", "medfm.checkpoint",
                     "medfm.layers", "medfm.models.embedders", "medfm.models.state_dicts", "medfm.models.vit_weights",
                     "medfm.data.manifest", "medfm.data.cohort",
                     "medfm.modalities")


def _modules(packages: Dict[str, Path] = PACKAGES) -> Dict[str, Path]:
    mods = {}
    for pkg, folder in packages.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = path
    return mods


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.AST, modules: Dict[str, Path] = MODULES) -> List[str]:
    """medfm modules an import statement binds (the most specific module each name resolves to)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_pkg else module.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return _known(names, modules)


def _known(names, modules: Dict[str, Path]) -> List[str]:
    """Each name as the most specific scanned module it is in (dropped when none)."""
    out = []
    for name in names:
        while name and name not in modules:  # "medfm.models.factory.create_model" -> its module
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return sorted(set(out))


def _imports(modules: Dict[str, Path] = MODULES) -> Tuple[Dict[str, Set[str]], Dict[str, Set[str]],
                                                         List[Tuple[str, int, str]]]:
    """(module -> imported medfm modules, module -> medfm modules it imports by name,
    [(module, line, text) of function-level imports without a reason])."""
    graph: Dict[str, Set[str]] = defaultdict(set)
    named: Dict[str, Set[str]] = defaultdict(set)
    unexplained = []
    for module, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        top = set()
        for stmt in tree.body:  # module level, including `if TYPE_CHECKING:` / `try:` blocks
            top.update(id(n) for n in ast.walk(stmt) if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef,
                                                                                  ast.AsyncFunctionDef)))
        type_checking = {id(n) for stmt in tree.body if isinstance(stmt, ast.If)
                         and "TYPE_CHECKING" in ast.unparse(stmt.test) for n in ast.walk(stmt)}
        is_pkg = path.name == "__init__.py"
        named[module].update(t for t in _known(_by_name(module, is_pkg, tree), modules) if t != module)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in type_checking:
                continue
            targets = _targets(module, is_pkg, node, modules)
            if not targets:
                continue
            graph[module].update(t for t in targets if t != module)
            if id(node) not in top:
                if not _says_why(lines, node.lineno - 1):
                    unexplained.append((module, node.lineno, lines[node.lineno - 1].strip()))
    return graph, named, unexplained


def _literal(module: str, node: ast.AST) -> str:
    """The string an expression always has: a constant, or ``__name__`` joined with constants
    (``f"{__name__}.sources"``, ``__name__ + ".masked"``); ``""`` for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id == "__name__":
        return module
    if isinstance(node, ast.FormattedValue):
        return _literal(module, node.value)
    if isinstance(node, ast.JoinedStr):
        parts = [_literal(module, v) for v in node.values]
        return "".join(parts) if all(parts) else ""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(module, node.left), _literal(module, node.right)
        return left + right if left and right else ""
    return ""


def _by_name(module: str, is_pkg: bool, tree: ast.AST) -> List[str]:
    """Modules ``module`` imports by name: ``import_module("...")`` (with its ``package``),
    ``<registry>.declare(name, "...")`` and the keys of ``lazy_exports(__name__, {...})``."""
    package = module if is_pkg else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        names: List[ast.AST] = []
        if func == "import_module" and node.args:
            names = [node.args[0]]
        elif func == "declare" and len(node.args) >= 2:
            names = [node.args[1]]
        elif func == "lazy_exports" and len(node.args) >= 2 and isinstance(node.args[1], ast.Dict):
            names = [k for k in node.args[1].keys if k is not None]
        for name in filter(None, (_literal(module, n) for n in names)):
            found.append(package + name if name.startswith(".") else name)
    return found


def _says_why(lines: List[str], i: int) -> bool:
    """Line ``i`` (an import) or the block of imports and comments right above it has ``# deferred:``."""
    while i >= 0:
        text = lines[i].strip()
        if "# deferred:" in text:
            return True
        if not text.startswith(("from ", "import ", "#", ")")) and not text.endswith((",", "(")):
            return False
        i -= 1
    return False


GRAPH, NAMED, UNEXPLAINED = _imports()


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(source_pkgs, forbidden) -> List[str]:
    return sorted(f"{m} imports {t}" for m, ts in GRAPH.items() if _within(m, *source_pkgs)
                  for t in ts if _within(t, *forbidden))


def test_the_scan_sees_the_package():
    # guards the test itself: if the walk or the resolution broke, every rule below would pass vacuously
    assert "medfm.models.factory" in MODULES and "medfm.modalities.dna" in MODULES
    assert "medfm.models.multimodal" in GRAPH["medfm.models.factory"]
    assert any(t.startswith("medfm.modality") for t in GRAPH["medfm.modalities.dna"])


def test_engine_never_imports_evaluation_or_apps():
    engine = [m for m in MODULES if _within(m, "medfm") and not _within(m, *APPS, "medfm.modalities",
                                                                       "medfm.evaluation", "medfm.configs")]
    bad = sorted(f"{m} imports {t}" for m in engine for t in GRAPH[m]
                 if _within(t, "medfm.evaluation", "medfm.modalities", *APPS))
    assert bad == []


def test_models_never_import_finetune_train_or_evaluation():
    assert _violations(["medfm.models"], ["medfm.finetune", "medfm.train", "medfm.evaluation"]) == []


def test_modalities_import_only_the_engine_contract():
    bad = sorted(f"{m} imports {t}" for m in MODULES if _within(m, "medfm.modalities") for t in GRAPH[m]
                 if _within(t, "medfm") and not _within(t, *MODALITY_CONTRACT))
    assert bad == []


def test_nothing_below_the_apps_imports_them():
    bad = sorted(f"{m} imports {t}" for m in MODULES if not _within(m, *APPS)
                 for t in GRAPH[m] if _within(t, *APPS))
    assert bad == []


def _edges(*graphs: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    out: Dict[str, Set[str]] = defaultdict(set)
    for graph in graphs:
        for m, ts in graph.items():
            out[m] |= set(ts)
    return out


def _cycles(graph: Dict[str, Set[str]] = None, modules=None) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan); default: the product code's
    import statements and imports by name together."""
    graph = _edges(GRAPH, NAMED) if graph is None else graph
    modules = MODULES if modules is None else modules
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles():
    # A package's __init__ re-exporting its submodules is not a cycle unless a submodule imports the
    # package back; every such back-edge is a real cycle at import time. Imports by name count.
    assert _cycles() == []


def test_the_scan_reads_imports_by_name():
    # guards the by-name reading: the registries' loaders and the declarations are seen
    assert {"medfm.modalities", "medfm.objectives", "medfm.models.vit_tower", "medfm.models.presets"} <= \
        NAMED["medfm.plugins"]
    assert {"medfm.modalities.weight_formats", "medfm.modalities.sources"} <= NAMED["medfm.modalities"]
    assert "medfm.objectives.masked" in NAMED["medfm.objectives"]  # __name__ + ".masked"
    assert "medfm.models.factory" in NAMED["medfm.models"]  # lazy_exports


def test_the_registry_names_no_module_that_registers_into_it():
    # naming one would be a cycle (each imports medfm.registry): the loaders live in medfm.plugins
    assert NAMED["medfm.registry"] == set() and GRAPH["medfm.registry"] <= {"medfm.errors"}


def test_function_level_imports_of_medfm_say_why():
    assert [f"{m}:{line}: {text}" for m, line, text in UNEXPLAINED] == []


def test_cycle_detector_finds_a_planted_cycle(monkeypatch):
    # the detector itself can fail: plant a -> b -> a and it must be reported
    monkeypatch.setitem(GRAPH, "medfm.errors", GRAPH["medfm.errors"] | {"medfm.io"})
    monkeypatch.setitem(GRAPH, "medfm.io", GRAPH["medfm.io"] | {"medfm.errors"})
    assert any({"medfm.errors", "medfm.io"} <= set(c) for c in _cycles())


def _plant(root: Path, files: Dict[str, str]) -> Dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return _modules({"plant": root / "plant"})


@pytest.mark.parametrize("how", ["import_module", "declare", "lazy_exports"])
def test_a_cycle_through_an_import_by_name_is_found(tmp_path, how):
    # a throw-away package whose only way back is by name: the import statements alone show no cycle
    by_name = {"import_module": 'import importlib\n\ndef load():\n    importlib.import_module("plant.impl")\n',
               "declare": 'from plant.reg import REG\nREG.declare("x", f"{__name__}.impl")\n',
               "lazy_exports": 'from plant.lazy import lazy_exports\n'
                               '__getattr__, __dir__ = lazy_exports(__name__, {".impl": ["X"]})\n'}[how]
    where = "plant/__init__.py" if how != "import_module" else "plant/reg.py"
    files = {"plant/__init__.py": "", "plant/reg.py": "REG = None\n", "plant/lazy.py": "",
             "plant/impl.py": "from plant.reg import REG\nfrom plant import lazy\n"}
    files[where] = by_name + ("REG = None\n" if where == "plant/reg.py" else "")
    if how != "import_module":  # the package's submodule imports the package back
        files["plant/impl.py"] += "import plant\n"
    modules = _plant(tmp_path, files)
    graph, named, _ = _imports(modules)
    assert _cycles(graph, modules) == []
    cycles = _cycles(_edges(graph, named), modules)
    assert len(cycles) == 1 and "plant.impl" in cycles[0], cycles
