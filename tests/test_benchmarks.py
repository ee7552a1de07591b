"""Every benchmark runs end to end at a tiny size and prints its table and summary.

Timings are not checked here (they are what the benchmarks report); this only keeps the
scripts working as the code changes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))


def test_every_benchmark_is_covered():
    assert SCRIPTS == [
        "bench_accuracy.py",
        "bench_gui.py",
        "bench_large_zarr.py",
        "bench_predict.py",
        "bench_time_to_accuracy.py",
        "bench_train.py",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_tiny(script, tmp_path):
    if script == "bench_gui.py" and not os.environ.get("DISPLAY"):
        pytest.fail("bench_gui.py needs a display: run the suite under xvfb-run (make test does)")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--tiny"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.lower().startswith("summary") for line in lines), result.stdout
    assert "nan" not in lines[-1].lower()
