"""Importing the package must stay light: no torch, no Qt, no napari (docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "magicgui")


def _modules_after_import(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_import_package_is_light() -> None:
    loaded = _modules_after_import("import napari_unet")
    assert "napari_unet" in loaded
    assert not [m for m in HEAVY if m in loaded]


def test_import_sample_data_is_light() -> None:
    loaded = _modules_after_import(
        "import napari_unet._sample_data as sd\nsd.synthetic_nuclei_3d()\nsd.dsb2018_nuclei()"
    )
    assert not [m for m in HEAVY if m in loaded]


def test_version_matches_installed_metadata() -> None:
    from importlib.metadata import version

    import napari_unet

    # `make venv` installs the package (editable); the metadata must agree with the code
    assert napari_unet.__version__ == version("napari-unet")


def _imports_of_package() -> dict[str, set[str]]:
    """For every module of napari_unet, the package's modules it imports (lazy imports too)."""
    import ast

    root = REPO / "napari_unet"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for candidate in [target, *(f"{target}.{a.name}" for a in node.names)]:
                if candidate in modules and candidate != name and "." in candidate:
                    graph[name].add(candidate)
    # a package's __init__ re-exports lazily from its modules: not a layer of its own
    return {m: {t for t in ts if modules[t].name != "__init__.py"} for m, ts in graph.items()}


def test_no_import_cycle_between_modules() -> None:
    """docs/architecture.md: modules form layers, lazy imports included."""
    graph = _imports_of_package()
    assert graph["napari_unet.safety"] and "napari_unet.packages" in graph["napari_unet.safety"]
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
