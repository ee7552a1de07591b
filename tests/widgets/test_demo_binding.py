"""``make demo`` runs napari on PyQt6 where it is installed: no PyQt5 deprecation toast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[2]

SHOW_DEMO_VIEWER = """
import sys
sys.path.insert(0, {resources!r})
import demo  # chooses the binding before qtpy is imported
import napari, qtpy
from napari.utils.notifications import notification_manager
viewer = napari.Viewer(show=True)
napari.qt.get_qapp().processEvents()
print("binding", qtpy.API_NAME)
for record in notification_manager.records:
    print("notification", record.message)
viewer.close()
"""


def test_the_demo_viewer_runs_on_pyqt6_without_a_deprecation_toast():
    env = {k: v for k, v in os.environ.items() if k != "QT_API"}
    result = subprocess.run(
        [sys.executable, "-c", SHOW_DEMO_VIEWER.format(resources=str(ROOT / "resources"))],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "binding PyQt6" in result.stdout
    notes = [line for line in result.stdout.splitlines() if line.startswith("notification")]
    assert not [n for n in notes if "deprecated" in n.lower()], notes
