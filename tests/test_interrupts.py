"""Nothing lost when two runs meet or the user presses Ctrl+C: the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import tifffile

from napari_unet.interrupts import SAME_WITHIN
from napari_unet.store import load_model
from napari_unet.writer import hold, info_path, lock_path, writer

from .conftest import default_sigint, held_elsewhere, make_nuclei, write_nuclei_folders

NET = ["--width", "4", "--depth", "2", "--patch", "32", "--batch-size", "4", "--init", "scratch"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = write_nuclei_folders(tmp_path_factory.mktemp("stops"), 3)
    (root / "often.json").write_text('{"checkpoint_every": 1}')  # a checkpoint every second
    return root


def train_cmd(folders, out, *extra):
    args = ["train", "--images", folders / "images", "--labels", folders / "labels",
            "--labels-kind", "instances", "--out", out, "--device", "cpu", *NET,
            *extra]  # fmt: skip
    return [sys.executable, "-m", "napari_unet.cli", *map(str, args)]


def often(folders):
    return ["--config", folders / "often.json"]


def start(cmd):
    """Start ``cmd``; return it once it printed its first training step."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step "):
            return proc, lines
    proc.wait()
    raise AssertionError(f"no training step: {''.join(lines)} {proc.stderr.read()}")


def finish(proc, lines, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return "".join(lines) + out, err


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


@pytest.mark.slow
def test_second_training_into_a_busy_folder_is_refused_naming_the_holder(folders, tmp_path):
    out = tmp_path / "m"
    first, lines = start(train_cmd(folders, out, "--time-budget", "30", *often(folders)))
    time.sleep(1.5)  # a checkpoint: predicting from the folder reads it
    image = folders / "images" / "n0.tif"
    # both at once, while the first trains (each starts Python and torch: seconds on a busy CPU)
    cmd = [sys.executable, "-m", "napari_unet.cli", "predict", str(out), str(image), "--out",
           str(tmp_path / "p")]  # fmt: skip
    predicting = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.run(train_cmd(folders, out, "--steps", "3"), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    out_text, err_text = predicting.communicate(timeout=120)
    predicted = subprocess.CompletedProcess(predicting.args, predicting.returncode, out_text,
                                            err_text)  # fmt: skip
    stdout, err = finish(first, lines)
    assert predicted.returncode == 0, predicted.stderr
    note = f"{out} is being trained (pid {first.pid}, started "
    assert note in predicted.stdout and "predicting with its last complete save, step " in (
        predicted.stdout
    )
    assert first.returncode == 0, err
    assert second.returncode == 2
    assert f"{out} is being written by another training (pid {first.pid}, started " in second.stderr
    assert "training on" not in second.stdout  # refused before reading any image
    history = json.loads((out / "training.json").read_text())
    assert len(history["sessions"]) == 1 and history["steps"] > 3  # the first's model, whole
    load_model(out)
    assert not info_path(out).exists()  # the writer file goes with the writer


@pytest.mark.slow
def test_a_lock_left_by_a_killed_training_is_taken_over(folders, tmp_path):
    out = tmp_path / "m"
    proc, lines = start(
        train_cmd(folders, out, "--time-budget", "600", "--config", folders / "often.json")
    )
    time.sleep(1.5)  # a checkpoint is written
    proc.kill()
    proc.communicate(timeout=60)
    assert lock_path(out).exists() and info_path(out).exists()  # left behind
    assert writer(out) is None  # its process is gone: not a writer
    r = subprocess.run(train_cmd(folders, out, "--resume", "--steps", "2"), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"(pid {proc.pid}, started" in r.stderr and "taken over" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "why"), [(signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGTERM, 143, "terminated")])  # fmt: skip
def test_a_signal_stops_after_the_step_saves_and_resumes(folders, tmp_path, sig, code, why):
    out = tmp_path / "m"
    proc, lines = start(train_cmd(folders, out, "--time-budget", "600"))
    time.sleep(1.0)
    proc.send_signal(sig)
    stdout, err = finish(proc, lines)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"napari-unet: {why} at step ")
    step = int(last.split(" at step ")[1].split(":")[0])
    assert f"is in {out}; continue with: napari-unet train " in last and last.endswith("--resume")
    model = load_model(out)
    session = model.history["sessions"][-1]
    assert model.history["steps"] == step > 0
    assert session["stopped"] == ("stopped by the user" if why == "interrupted" else "terminated")
    assert session["postprocess_search"] == {"skipped": why}
    assert "instance settings not chosen again" in stdout
    assert (out / "checkpoint").exists() and leftovers(out) == []
    # the command it printed continues from that step (with fewer steps, here)
    command = shlex.split(last.split("continue with: ")[1])[1:]
    budget = command.index("--time-budget")
    command[budget : budget + 2] = ["--steps", "2", "--replace-worse"]
    r = subprocess.run([sys.executable, "-m", "napari_unet.cli", *command], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    history = json.loads((out / "training.json").read_text())
    assert history["steps"] == step + 2
    assert history["sessions"][-1]["start_step"] == step


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once_and_leaves_no_partial_file(folders, tmp_path):
    out = tmp_path / "m"
    slow = ["--width", "16", "--patch", "192", "--batch-size", "64"]  # steps of seconds
    proc, lines = start(train_cmd(folders, out, "--time-budget", "600", *slow, *often(folders)))
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # mid-step: stop after it...
    assert "stopping after this step" in proc.stderr.readline()
    time.sleep(SAME_WITHIN + 0.1)  # (sooner, it would be the same request passed on)
    proc.send_signal(signal.SIGINT)  # ...no: now
    stdout, err = finish(proc, lines)
    assert proc.returncode == 130
    assert "aborted, nothing more was saved" in err
    assert "model saved to" not in stdout
    assert leftovers(tmp_path) == []
    if out.exists():  # a checkpoint before the signals: whole, and it loads
        load_model(out)


@pytest.mark.slow
def test_ctrl_c_before_the_first_step_saves_nothing(folders, tmp_path):
    out = tmp_path / "m"
    cmd = train_cmd(folders, out, "--steps", "5")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    proc.stdout.readline()  # "training on 3 image(s)": the data is read
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "napari-unet: interrupted" in err
    assert not out.exists()


def test_hold_refuses_a_second_holder_and_names_it(tmp_path):
    out = tmp_path / "m"
    with held_elsewhere(out) as other:
        busy = rf"being written by another training \(pid {other.pid}"
        with pytest.raises(ValueError, match=busy):
            with hold(out):
                pass
        assert writer(out)["pid"] == other.pid
    with hold(out) as notice:  # its process died: taken over, with a notice
        assert f"pid {other.pid}" in notice and "taken over" in notice
        with hold(out) as nested:  # the same process again: reentrant
            assert nested == ""
        assert writer(out)["pid"] == os.getpid()
    assert writer(out) is None


@pytest.mark.slow
def test_ctrl_c_in_a_batch_keeps_complete_outputs_and_rows_and_a_rerun_skips_them(tmp_path):
    from napari_unet.training import train

    from .conftest import SMALL

    images, labels = zip(*(make_nuclei(shape=(256, 256), seed=s) for s in range(2)), strict=True)
    model = tmp_path / "model"
    train(list(images), list(labels), labels_kind="instances", steps=2, out=model,
          init=None, **SMALL)  # fmt: skip
    src = tmp_path / "in"
    src.mkdir()
    for s in range(8):
        tifffile.imwrite(src / f"img{s}.tif", make_nuclei(shape=(512, 512), seed=s)[0])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "napari_unet.cli", "predict", str(model), str(src), "--out",
           str(out), "--instances", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    first = ""
    while not first.startswith("[1/8]"):
        first = proc.stdout.readline()
        assert first, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    done = sorted(p.stem for p in out.glob("img*.tif"))
    assert 1 <= len(done) < 8
    for name in done:  # every output there is whole
        assert tifffile.imread(out / f"{name}.tif").shape == (512, 512)
    with open(out / "summary.csv") as fh:
        rows = {r.split(",")[0] for r in fh.read().splitlines()[1:]}
    assert rows == set(done)
    assert leftovers(tmp_path) == [] and not [p for p in out.iterdir() if p.name.startswith(".")]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped, finished by an earlier run") == len(done)
    assert len(list(out.glob("img*.tif"))) == 8


def test_a_folder_read_between_two_writes_of_its_training_is_read_again(
    tiny_model, tmp_path, monkeypatch
):
    import shutil

    import napari_unet.store as store
    from napari_unet.safety import ModelFormatError

    folder = tmp_path / "m"
    shutil.copytree(tiny_model[1], folder)
    real, calls = store.read_model_folder, []

    def torn_twice(path):
        calls.append(path)
        if len(calls) <= 2:
            raise ModelFormatError(f"{path}: weights do not match config (interrupted save?)")
        return real(path)

    monkeypatch.setattr(store, "read_model_folder", torn_twice)
    with pytest.raises(ModelFormatError):  # nobody writes it: a damaged folder, said at once
        store.load_model(folder)
    assert len(calls) == 1
    calls.clear()
    with held_elsewhere(folder):  # a training writes it: read again
        model = store.load_model(folder)
    assert len(calls) == 3 and model.history["steps"] == tiny_model[0].history["steps"]
