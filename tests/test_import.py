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
