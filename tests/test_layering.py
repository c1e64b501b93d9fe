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
                     "medfm.input_files", "medfm.config_files",
                     "medfm.layers", "medfm.models.embedders", "medfm.data.manifest", "medfm.data.cohort",
                     "medfm.modalities")


def _modules() -> Dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = path
    return mods


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.AST) -> List[str]:
    """medfm modules an import statement binds (the most specific module each name resolves to)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_pkg else module.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:  # "medfm.models.factory.create_model" -> its module
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return sorted(set(out))


def _imports() -> Tuple[Dict[str, Set[str]], List[Tuple[str, int, str]]]:
    """(module -> imported medfm modules, [(module, line, text) of function-level imports without a reason])."""
    graph: Dict[str, Set[str]] = defaultdict(set)
    unexplained = []
    for module, path in MODULES.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        top = set()
        for stmt in tree.body:  # module level, including `if TYPE_CHECKING:` / `try:` blocks
            top.update(id(n) for n in ast.walk(stmt) if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef,
                                                                                  ast.AsyncFunctionDef)))
        type_checking = {id(n) for stmt in tree.body if isinstance(stmt, ast.If)
                         and "TYPE_CHECKING" in ast.unparse(stmt.test) for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in type_checking:
                continue
            targets = _targets(module, path.name == "__init__.py", node)
            if not targets:
                continue
            graph[module].update(t for t in targets if t != module)
            if id(node) not in top:
                if not _says_why(lines, node.lineno - 1):
                    unexplained.append((module, node.lineno, lines[node.lineno - 1].strip()))
    return graph, unexplained


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


GRAPH, UNEXPLAINED = _imports()


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


def _cycles() -> List[List[str]]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH.get(v, ())):
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

    for m in sorted(MODULES):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles():
    # A package's __init__ re-exporting its submodules is not a cycle unless a submodule imports the
    # package back; every such back-edge is a real cycle at import time.
    assert _cycles() == []


def test_function_level_imports_of_medfm_say_why():
    assert [f"{m}:{line}: {text}" for m, line, text in UNEXPLAINED] == []


def test_cycle_detector_finds_a_planted_cycle(monkeypatch):
    # the detector itself can fail: plant a -> b -> a and it must be reported
    monkeypatch.setitem(GRAPH, "medfm.errors", GRAPH["medfm.errors"] | {"medfm.io"})
    monkeypatch.setitem(GRAPH, "medfm.io", GRAPH["medfm.io"] | {"medfm.errors"})
    assert any({"medfm.errors", "medfm.io"} <= set(c) for c in _cycles())
