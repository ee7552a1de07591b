"""Faults during training: out of memory, NaN loss, a process killed while saving."""

import subprocess
import sys
import textwrap

import pytest
import torch

from napari_unet import events as ev
from napari_unet.store import WEIGHTS_FILE, load_model
from napari_unet.trainer import Trainer
from napari_unet.training import train

from .conftest import SMALL as TINY_NET

SMALL = {**TINY_NET, "batch_size": 8}


def inject_oom(monkeypatch, at_calls):
    """Make ``Trainer.train_step`` raise CUDA's out-of-memory error on the given calls."""
    real = Trainer.train_step
    calls = {"n": 0, "batches": []}

    def step(self, lr):
        calls["n"] += 1
        if calls["n"] in at_calls:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        calls["batches"].append((self.batch_size, self.patch))
        return real(self, lr)

    monkeypatch.setattr(Trainer, "train_step", step)
    return calls


def test_out_of_memory_halves_the_batch_then_the_patch_and_goes_on(nuclei, tmp_path, monkeypatch):
    images, labels = nuclei
    calls = inject_oom(monkeypatch, at_calls={3, 5, 6, 7, 9})
    events = []
    model = train(
        images,
        labels,
        labels_kind="instances",
        steps=8,
        out=tmp_path / "m",
        callback=events.append,
        **SMALL,
    )
    adjusted = [e for e in events if isinstance(e, ev.Adjusted)]
    assert (
        [(a.setting, a.old, a.new) for a in adjusted]
        == [
            ("batch_size", 8, 4),
            ("batch_size", 4, 2),
            ("batch_size", 2, 1),
            ("patch", 32, 16),  # same padding, depth 2: multiples of 4, at least 8
            ("patch", 16, 8),
        ][: len(adjusted)]
    )
    assert len(adjusted) == 5
    assert "batch halved from 8 to 4" in adjusted[0].message
    assert "out of memory at step" in adjusted[0].message
    assert calls["batches"][0] == (8, 32) and calls["batches"][-1] == (1, 8)
    assert model.history["steps"] == 8  # every asked step was done
    saved = load_model(tmp_path / "m")
    assert [a[1] for a in saved.history["sessions"][-1]["adjustments"]] == [
        "batch_size",
        "batch_size",
        "batch_size",
        "patch",
        "patch",
    ]


def test_out_of_memory_at_the_smallest_patch_is_a_clear_error(nuclei, monkeypatch):
    images, labels = nuclei
    inject_oom(monkeypatch, at_calls=set(range(1, 100)))
    with pytest.raises(MemoryError, match="even with batch 1 and patch 8"):
        train(images, labels, labels_kind="instances", steps=3, **SMALL)


def test_nan_loss_stops_without_saving_a_broken_model(nuclei, tmp_path, monkeypatch):
    import napari_unet.losses as losses

    images, labels = nuclei
    out = tmp_path / "m"
    train(images, labels, labels_kind="instances", steps=2, out=out, **SMALL)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = losses.masked_cross_entropy
    calls = {"n": 0}

    def loss(*args, **kwargs):  # the fourth step's loss is NaN (as a diverging run's would be)
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 4 else value

    monkeypatch.setattr(losses, "masked_cross_entropy", loss)  # what Recipe.loss calls
    with pytest.raises(FloatingPointError, match="loss became nan at step 6.*not saved"):
        train(images, labels, labels_kind="instances", steps=50, out=out, resume=True, **SMALL)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # nothing of the broken run was written
    load_model(out)


def test_process_killed_while_saving_leaves_the_previous_model(nuclei, tmp_path):
    """A child process saves over a model and is killed in the middle of writing the
    weights; the folder still loads, with the previous weights."""
    images, labels = nuclei
    out = tmp_path / "m"
    first = train(images, labels, labels_kind="instances", steps=2, out=out, **SMALL)
    weights = (out / WEIGHTS_FILE).read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal
        import napari_unet.store as store
        from napari_unet.store import load_model, save_model

        model = load_model({str(out)!r})
        for p in model.network.parameters():
            p.data.mul_(2.0)
        real = os.fsync
        def fsync_then_die(fd):  # the new weights are on disk under a temporary name
            real(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = fsync_then_die
        save_model(model, {str(out)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert (out / WEIGHTS_FILE).read_bytes() == weights
    again = load_model(out)
    pairs = zip(
        first.network.state_dict().values(), again.network.state_dict().values(), strict=True
    )
    for a, b in pairs:
        torch.testing.assert_close(a.cpu(), b.cpu())


def test_full_disk_while_saving_keeps_the_previous_model(nuclei, tmp_path, monkeypatch, capsys):
    import errno
    import os

    import tifffile

    from napari_unet.cli import main

    images, labels = nuclei
    for sub, arrays in (("i", images), ("l", labels)):
        (tmp_path / sub).mkdir()
        for k, a in enumerate(arrays):
            tifffile.imwrite(tmp_path / sub / f"{k}.tif", a)
    out = tmp_path / "m"
    args = [
        "train",
        "--images",
        str(tmp_path / "i"),
        "--labels",
        str(tmp_path / "l"),
        "--labels-kind",
        "instances",
        "--steps",
        "2",
        "--width",
        "4",
        "--depth",
        "2",
        "--patch",
        "32",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3 and "Traceback" not in "\n".join(err)
    assert "could not write" in err[-1] and "No space left on device" in err[-1]
    assert str(out) in err[-1]
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # the previous model, byte for byte
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    load_model(out)
