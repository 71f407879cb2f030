"""The service's shape: blueprints share service.serving and never import each other.

Blueprint modules are found by scanning service/ for a ``Blueprint(...)`` call;
imports are read with :mod:`ast` (top level and inside functions alike).
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    """Every module under service/ by its dotted name."""
    out = {}
    for path in sorted(SERVICE.rglob("*.py")):
        parts = list(path.relative_to(SERVICE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _defines_blueprint(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "Blueprint":
                return True
    return False


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names a module imports (``from a import b`` counts ``a`` and ``a.b``)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _parsed() -> dict[str, tuple[Path, ast.AST]]:
    return {
        name: (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for name, path in _modules().items()
    }


def test_blueprint_modules_never_import_each_other() -> None:
    parsed = _parsed()
    blueprints = {name for name, (_, tree) in parsed.items() if _defines_blueprint(tree)}
    assert {"service.api", "service.cds", "service.fhir_api", "service.pages"} <= blueprints
    offending = {}
    for name in sorted(blueprints):
        path, tree = parsed[name]
        others = _imports(tree, name, path.name == "__init__.py") & (blueprints - {name})
        if others:
            offending[name] = sorted(others)
    assert offending == {}, f"blueprint modules importing other blueprints: {offending}"


def test_no_service_module_is_over_the_line_limit() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"
