"""Annotations are autosaved beside the model and can be restored; the regression guard."""

import numpy as np
import pytest

from napari_unet import annotation_store as an
from napari_unet import events as ev
from napari_unet.store import WEIGHTS_FILE, content_hash, load_model
from napari_unet.training import train

from .conftest import SMALL


def test_autosave_restore_and_snapshots_by_hash(tmp_path, nuclei):
    model_dir = tmp_path / "model"
    labels = nuclei[1][0].astype(np.int32)
    first = an.autosave(model_dir, "my labels/../x", labels, meta={"napari_unet_kind": "x"})
    project = tmp_path / "model.annotations"
    assert first.file == "my_labels_.._x.tif" and (project / first.file).is_file()
    assert (project / first.file).resolve().parent == project.resolve()  # never a path
    mtime = (project / first.file).stat().st_mtime_ns
    an.autosave(model_dir, "my labels/../x", labels)  # unchanged: not rewritten
    assert (project / first.file).stat().st_mtime_ns == mtime
    edited = labels.copy()
    edited[:5, :5] = 7
    an.autosave(model_dir, "my labels/../x", edited, reason="train start", snapshot=True)
    entries = an.saved(model_dir)
    assert {e.file for e in entries} == {first.file, f"by-hash/{content_hash(edited)}.tif"}
    latest = next(e for e in entries if e.file == first.file)
    np.testing.assert_array_equal(an.restore(model_dir, latest), edited)
    snap = an.find_by_hash(model_dir, content_hash(edited))
    assert snap is not None and snap.reason == "train start"
    np.testing.assert_array_equal(an.restore(model_dir, snap), edited)
    # a file changed behind the index's back is refused, not silently used
    from napari_unet.files import write_tif

    write_tif(project / first.file, labels)
    with pytest.raises(ValueError, match="content hash differs"):
        an.restore(model_dir, latest)
    with pytest.raises(ValueError, match="must be an integer image"):
        an.autosave(model_dir, "f", labels.astype(np.float32))


def test_training_json_names_the_snapshot_of_the_labels(tmp_path, nuclei):
    images, labels = nuclei
    out = tmp_path / "m"
    for name, lab in zip("ab", labels[:2], strict=True):
        an.autosave(out, name, lab, reason="train start", snapshot=True)
    train(images[:2], labels[:2], labels_kind="instances", steps=2, out=out, **SMALL)
    recorded = [d["labels"] for d in load_model(out).history["sessions"][-1]["data"]]
    for digest, lab in zip(recorded, labels[:2], strict=True):
        entry = an.find_by_hash(out, digest)
        assert entry is not None
        np.testing.assert_array_equal(an.restore(out, entry), lab)


@pytest.mark.parametrize("replace_worse", [False, True])
def test_a_worse_model_does_not_replace_the_previous_one(
    tmp_path, nuclei, monkeypatch, replace_worse
):
    import napari_unet.training as training

    images, labels = nuclei
    out = tmp_path / "m"
    train(images, labels, labels_kind="instances", steps=2, out=out, **SMALL)
    before = (out / WEIGHTS_FILE).read_bytes()
    # the previous model, scored again on the new model's validation crops: no IoU beats it
    monkeypatch.setattr(training.TrainingRun, "score_network", lambda self, network: 2.0)
    events = []
    train(
        images,
        labels,
        labels_kind="instances",
        steps=3,
        out=out,
        resume=True,
        replace_worse=replace_worse,
        callback=events.append,
        **SMALL,
    )
    finished = next(e for e in events if isinstance(e, ev.Finished))
    assert (tmp_path / "m.previous" / WEIGHTS_FILE).read_bytes() == before
    if replace_worse:
        assert (out / WEIGHTS_FILE).read_bytes() != before
        assert load_model(out).history["steps"] == 5
        assert finished.message == ""
    else:
        assert (out / WEIGHTS_FILE).read_bytes() == before  # the previous model is back
        assert load_model(out).history["steps"] == 2
        assert load_model(tmp_path / "m.rejected").history["steps"] == 5
        assert "kept the previous model" in finished.message
        assert finished.path == str(tmp_path / "m.rejected")


def test_a_better_model_replaces_and_the_previous_is_kept(tmp_path, nuclei, monkeypatch):
    import napari_unet.training as training

    images, labels = nuclei
    out = tmp_path / "m"
    train(images, labels, labels_kind="instances", steps=2, out=out, **SMALL)
    before = (out / WEIGHTS_FILE).read_bytes()
    monkeypatch.setattr(training.TrainingRun, "score_network", lambda self, network: -1.0)
    train(images, labels, labels_kind="instances", steps=2, out=out, resume=True, **SMALL)
    assert load_model(out).history["steps"] == 4
    assert (tmp_path / "m.previous" / WEIGHTS_FILE).read_bytes() == before
    assert not (tmp_path / "m.rejected").exists()


def test_the_guard_scores_the_previous_model_on_the_new_validation_data(
    tmp_path, nuclei, monkeypatch
):
    """What the previous model recorded when it was trained (here an unbeatable 2.0, as
    after a label edit that made its own validation easy) is not what it is judged on:
    it is scored again on the crops the new model is scored on."""
    import napari_unet.guard as guard
    import napari_unet.training as training

    images, labels = nuclei
    out = tmp_path / "m"
    train(images, labels, labels_kind="instances", steps=1, out=out, **SMALL)
    monkeypatch.setattr(guard, "_last_iou", lambda folder: 2.0)
    scored = []
    real = training.TrainingRun.score_network

    def spy(self, network):
        scored.append(real(self, network))
        return scored[-1]

    monkeypatch.setattr(training.TrainingRun, "score_network", spy)
    events = []
    train(images, labels, steps=30, out=out, resume=True, callback=events.append, **SMALL)
    finished = next(e for e in events if isinstance(e, ev.Finished))
    final_iou = [e for e in events if isinstance(e, ev.Validated)][-1].iou
    assert len(scored) == 1 and 0.0 <= scored[0] < final_iou  # 1 step vs 31 steps
    assert finished.message == "" and load_model(out).history["steps"] == 31


def test_two_processes_autosaving_into_one_project_lose_no_entry(tmp_path):
    import subprocess
    import sys

    model = tmp_path / "model"
    code = (
        "import sys, numpy as np\nfrom napari_unet.annotation_store import autosave\n"
        "for i in range(8):\n"
        "    autosave(sys.argv[1], f'{sys.argv[2]}-{i}', np.full((8, 8), i + 1, np.uint8))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(model), who]) for who in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    names = {s.name for s in an.saved(model)}
    assert names == {f"{who}-{i}" for who in "ab" for i in range(8)}
