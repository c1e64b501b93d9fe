"""Import and size rules of the product code (``medfm/``, ``modalities/``, ``evaluation/``), on the source.

* A function-level import defers a heavy optional dependency or keeps CLI start-up fast, and
  says so: a ``# deferred: <reason>`` comment on the import or on the comment lines right above
  it (:func:`tests.test_layering._says_why`'s rule). stdlib modules and core dependencies that
  start-up does not have to avoid are imported at module top. What start-up avoids is checked
  by ``tests/test_startup.py``; the count of deferred imports has a ceiling here.
* No product file is over :data:`MAX_LINES` lines: new work goes into new small modules.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Tuple

from test_layering import _says_why  # one rule for what counts as a stated reason

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("medfm", "modalities", "evaluation")

#: function-level imports allowed in product code (issue 21: at most 40); never raise it. A command's
#: runner (medfm/cli/runners) imports its stack at module top, so the CLI needs none.
MAX_DEFERRED = 40
#: files whose function-level imports do not all say why yet, each with the work that owns the file
#: (remove an entry when its imports are at module top or carry their reason)
UNEXPLAINED_IN: dict = {}
MAX_LINES = 500
#: files over MAX_LINES, each with the work that splits it (remove an entry when that work lands)
OVER_MAX_LINES: dict = {}


def _product_files() -> List[Path]:
    return sorted(p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py"))


def function_level_imports(path: Path) -> List[Tuple[int, str, bool]]:
    """``[(line, text, says why)]`` of the import statements inside a function of ``path``."""
    source = path.read_text()
    lines = source.splitlines()
    found = {}
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found[node.lineno] = (node.lineno, lines[node.lineno - 1].strip(),
                                          _says_why(lines, node.lineno - 1))
    return sorted(found.values())


def _all_deferred() -> List[Tuple[str, int, str, bool]]:
    return [(str(p.relative_to(ROOT)), *imp) for p in _product_files() for imp in function_level_imports(p)]


def test_the_scan_sees_function_level_imports(tmp_path):
    # guards the test itself: a walk that found nothing would pass every rule below
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    import json\n    # deferred: a reason\n    import torch\n\n"
                     "class C:\n    def m(self):\n        from a import (b,\n                       c)  # deferred: x\n")
    assert function_level_imports(probe) == [(4, "import json", False), (6, "import torch", True),
                                             (10, "from a import (b,", False)]
    assert len(_product_files()) > 100 and len(_all_deferred()) > 0


def test_every_function_level_import_says_why():
    found = _all_deferred()
    unexplained = [f"{f}:{n}: {text}" for f, n, text, why in found if not why and f not in UNEXPLAINED_IN]
    assert unexplained == [], "function-level imports without a '# deferred: <reason>' comment " \
                              "(import at module top, or say why it must wait):\n" + "\n".join(unexplained)
    stale = sorted(set(UNEXPLAINED_IN) - {f for f, _, _, why in found if not why})
    assert stale == [], f"every function-level import of these files says why, drop from UNEXPLAINED_IN: {stale}"


def test_function_level_imports_stay_under_the_ceiling():
    found = _all_deferred()
    assert len(found) <= MAX_DEFERRED, (f"{len(found)} function-level imports in product code, the ceiling is "
                                        f"{MAX_DEFERRED}:\n" + "\n".join(f"{f}:{n}: {t}" for f, n, t, _ in found))


def test_no_product_file_is_over_the_line_limit():
    over = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _product_files()}
    over = {f: n for f, n in over.items() if n > MAX_LINES}
    assert set(over) <= set(OVER_MAX_LINES), f"files over {MAX_LINES} lines: " + ", ".join(
        f"{f} ({n})" for f, n in sorted(over.items()) if f not in OVER_MAX_LINES)
    stale = sorted(set(OVER_MAX_LINES) - set(over))
    assert stale == [], f"no longer over {MAX_LINES} lines, drop from OVER_MAX_LINES: {stale}"
