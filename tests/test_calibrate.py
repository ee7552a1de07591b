"""Instance post-processing chosen per model (napari_unet.calibrate) and carried by it."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_unet as nu
from napari_unet import events as ev
from napari_unet.calibrate import FG_THRESHOLDS, Truth, calibrate, score, truth_from_labels
from napari_unet.config import ModelSpec, PostprocessConfig
from napari_unet.store import load_model
from napari_unet.targets import IGNORE
from napari_unet.training import train

DATA = Path(__file__).parent / "data"


def blobs(rows=2):
    """Probabilities of ``3 rows`` big square cells (20x20) and as many bits of debris (5x5),
    and the truth; 7 rows: enough held-out objects for a search (FEW_OBJECTS)."""
    shape = (60 * rows, 160)
    truth = np.zeros(shape, np.uint16)
    probs = np.zeros((3, *shape), np.float32)
    probs[0] = 1.0
    for k in range(3 * rows):
        y, x = 10 + (k // 3) * 55, 10 + (k % 3) * 50
        truth[y : y + 20, x : x + 20] = k + 1
        probs[:, y : y + 20, x : x + 20] = np.array([0.0, 0.95, 0.05])[:, None, None]
        probs[:, y + 30 : y + 35, x : x + 5] = np.array([0.2, 0.75, 0.05])[:, None, None]  # debris
    return probs, truth


def test_the_size_prior_drops_debris_the_default_keeps():
    probs, truth = blobs(rows=7)
    default = PostprocessConfig()
    assert score([probs], [Truth(truth)], default, 2) == pytest.approx(21 / 42)  # 21 FP debris
    settings, record = calibrate([probs], [Truth(truth)], 2)
    # a quarter of a small labeled object (cells of 400 px): the 25 px debris goes first
    assert record["min_size_prior"] == 100 and record["start"][2] == 100
    assert record["start_ap"] == 1.0 == record["chosen_ap"]
    assert score([probs], [Truth(truth)], settings, 2) == 1.0
    assert record["median_object_size"] == 400 and record["objects"] == 21
    assert record["searched"] and len(record["tried"]) > 10
    assert all(len(t) == 5 for t in record["tried"])
    json.dumps(record)  # goes into training.json as it is


def test_the_search_drops_debris_when_the_prior_keeps_it():
    probs, truth = blobs(rows=7)
    # the labeled objects include small ones (40 px): the prior (10 px) keeps 25 px debris
    sizes = np.array([40, 40] + [400] * 19)
    settings, record = calibrate([probs], [Truth(truth)], 2, sizes=sizes)
    assert record["min_size_prior"] == 10 and record["start_ap"] == pytest.approx(0.5)
    assert record["chosen_ap"] == 1.0 and score([probs], [Truth(truth)], settings, 2) == 1.0
    assert settings.min_size > 25 or settings.seed_threshold > 0.75
    assert record["labeled_objects"] == 21 and settings.object_size == 400


def test_the_minimum_size_never_drops_below_a_quarter_of_a_small_object():
    probs, truth = blobs(rows=7)
    # a held-out cell cut by the image's edge (9 px; the cells are 400): only "no minimum
    # size" would find it, and on real images that setting keeps every fragment
    probs[:, 40:49, 150:151] = np.array([0.0, 0.95, 0.05])[:, None, None]
    truth[40:49, 150:151] = 99
    settings, record = calibrate([probs], [Truth(truth)], 2, sizes=np.full(21, 400))
    assert min(t[2] for t in record["tried"]) == 100 == record["small_object_size"] / 4
    assert settings.min_size >= 100


def test_objects_cut_by_the_image_edge_are_not_object_sizes():
    from napari_unet.calibrate import object_sizes

    probs, truth = blobs()
    truth[0:4, 100:110] = 9  # a nucleus cut by the top edge: 40 px of a 400 px one
    settings, record = calibrate([probs], [Truth(truth)], 2)
    assert record["min_size_prior"] == 100 and record["median_object_size"] == 400
    assert sorted(object_sizes([Truth(truth)])) == [40] + [400] * 6  # every size, scored
    edge_only = np.zeros((30, 30), np.uint16)
    edge_only[0:5, 0:5] = 1
    assert list(object_sizes([Truth(edge_only)], uncut=True)) == [25]  # none left: all kept


def test_the_search_stops_at_its_deadline_with_the_best_so_far():
    probs, truth = blobs(rows=7)
    whole, record = calibrate([probs], [Truth(truth)], 2)
    assert "stopped" not in record and len(record["tried"]) > 10
    ticks = iter(range(100))
    settings, record = calibrate([probs], [Truth(truth)], 2, deadline=3, clock=lambda: next(ticks))
    assert record["stopped"] == "time" and 1 < len(record["tried"]) <= 4
    assert record["chosen_ap"] >= record["start_ap"]


def test_without_held_out_objects_nothing_is_searched():
    sizes = np.array([3000, 4000, 4200, 5000])  # four outlined cells, all in the loss
    start = PostprocessConfig(seed_threshold=0.7, fg_threshold=0.5, min_size=15)
    settings, record = calibrate([], [], 2, start, sizes=sizes)
    assert record["start_ap"] is None and record["chosen_ap"] is None and not record["tried"]
    assert (settings.seed_threshold, settings.fg_threshold) == (0.7, 0.5)
    small = np.percentile(sizes, 5)
    assert settings.min_size == round(small / 4) and settings.min_size > 500
    event = ev.Calibrated(1, 0.7, 0.5, settings.min_size, None, None, "the training labels")
    assert "not searched" in event.describe() and "AP" not in event.describe()


def test_a_tie_keeps_the_starting_settings():
    probs, truth = blobs(rows=7)
    probs[1][probs[1] == 0.75] = 0.0  # no debris: every setting finds the 6 cells
    probs[0][probs[0] == 0.2] = 1.0
    start = PostprocessConfig(seed_threshold=0.7, fg_threshold=0.5, min_size=3)
    settings, record = calibrate([probs], [Truth(truth)], 2, start)
    # the thresholds stay; the minimum size is the prior, a quarter of the 400 px cells
    assert replace(settings, object_size=None) == replace(start, min_size=100)
    assert record["chosen_ap"] == record["start_ap"] == 1.0
    assert settings.object_size == 400  # the median labeled object: what prediction zooms to


def test_predicted_objects_on_painted_background_are_false_positives():
    probs, truth = blobs()
    labels = np.zeros(truth.shape, np.uint16)
    labels[truth > 0] = truth[truth > 0] + 1
    t = truth_from_labels(labels, "sparse-instances")
    settings = PostprocessConfig(min_size=0)
    assert score([probs], [t], settings, 2) == 1.0  # the debris lies on unlabeled pixels
    labels[36:48] = 1  # background painted over the first row of debris
    t = truth_from_labels(labels, "sparse-instances")
    assert score([probs], [t], settings, 2) == pytest.approx(6 / 9)  # 3 FP on the paint


def test_sparse_instances_score_only_where_labeled():
    probs, truth = blobs()
    labels = np.zeros(truth.shape, np.uint16)
    labels[:40] = 1  # background painted on the top band only
    labels[truth > 0] = truth[truth > 0] + 1  # all six cells outlined (ids 2..7)
    t = truth_from_labels(labels, "sparse-instances")
    assert set(np.unique(t.objects)) == {0, *range(2, 8)}
    # the debris below the top band lies on unlabeled pixels: neither right nor wrong there
    inside = score([probs], [t], PostprocessConfig(), 2)
    everywhere = score([probs], [Truth(truth)], PostprocessConfig(), 2)
    assert inside > everywhere


def test_training_chooses_and_stores_the_postprocessing(nuclei, tmp_path):
    images, labels = nuclei
    out = tmp_path / "m"
    events = []
    model = train(
        images,
        labels,
        labels_kind="instances",
        steps=25,
        width=4,
        depth=2,
        patch=48,
        batch_size=4,
        device="cpu",
        out=out,
        callback=events.append,
    )
    calibrated = [e for e in events if isinstance(e, ev.Calibrated)]
    assert len(calibrated) == 1 and calibrated[0].ap >= calibrated[0].start_ap
    # the held-out image has fewer objects than a full search needs: only the minimum size
    # and foreground threshold are chosen, on its false objects, and it says so
    assert calibrated[0].search == "background" and 0 < calibrated[0].objects < 20
    assert (
        "false objects on the held-out background (1 held-out images)" in calibrated[0].describe()
    )
    # 6 images: one held out, the post-processing is chosen on it
    assert calibrated[0].measured_on == "1 held-out images"
    saved = json.loads((out / "config.json").read_text())["postprocess"]
    chosen = model.config.postprocess
    assert saved == {
        "seed_threshold": chosen.seed_threshold,
        "fg_threshold": chosen.fg_threshold,
        "min_size": chosen.min_size,
        "object_size": chosen.object_size,
        "split": chosen.split,
    }
    search = load_model(out).history["sessions"][-1]["postprocess_search"]
    assert search["chosen"] == [chosen.seed_threshold, chosen.fg_threshold, chosen.min_size]
    assert search["tried"] and search["measured_on"] == "1 held-out images"
    # the model's own settings are what predict uses; a call may override them
    image = images[0]
    own = nu.predict(model, image, instances=True, device="cpu", zoom=1.0)  # no object zoom
    probs = nu.predict_proba(model, image, device="cpu")
    from napari_unet.postprocess import instances_with

    assert np.array_equal(own, instances_with(probs, chosen, model.config))
    huge = nu.predict(model, image, instances=True, device="cpu", min_size=10**6)
    assert huge.max() == 0


def test_semantic_models_are_not_calibrated(nuclei):
    images, labels = nuclei
    events = []
    strokes = [(lab > 0).astype(np.uint8) + 1 for lab in labels]
    model = train(images, strokes, labels_kind="sparse", steps=2, width=4, depth=2, patch=32,
                  batch_size=2, device="cpu", callback=events.append)  # fmt: skip
    assert not any(isinstance(e, ev.Calibrated) for e in events)
    assert model.config.postprocess == PostprocessConfig()


def test_a_model_saved_before_calibration_predicts_exactly_as_before():
    """tests/data/model-2026-11-25 was trained and its outputs written by napari-unet as it
    was before per-model post-processing (commit 57ec819): no postprocess section."""
    folder = DATA / "model-2026-11-25"
    assert "postprocess" not in json.loads((folder / "config.json").read_text())
    model = load_model(folder)
    assert model.config.postprocess == PostprocessConfig()
    image = tifffile.imread(DATA / "model-2026-11-25.image.tif")
    instances = nu.predict(model, image, instances=True, device="cpu")
    labels = nu.predict(model, image, device="cpu")
    assert np.array_equal(instances, tifffile.imread(DATA / "model-2026-11-25.instances.tif"))
    assert np.array_equal(labels, tifffile.imread(DATA / "model-2026-11-25.labels.tif"))
    assert ModelSpec.from_dict(model.config.to_dict()) == model.config


def test_calibration_never_scores_objects_that_were_in_the_loss(monkeypatch, nuclei):
    """A real training on 6 outlined nuclei: calibration sees only what the loss did not."""
    import napari_unet.training as training

    seen, trained = {}, []
    real_calibrate, real_sampler = training.calibrate, training.PatchSampler

    def spy(probs, truths, dims, start, sizes, **kwargs):
        seen.update(truths=truths, sizes=sizes)
        return real_calibrate(probs, truths, dims, start, sizes, **kwargs)

    class Sampler(real_sampler):
        def __init__(self, images, targets, *args, **kwargs):
            trained.append([np.asarray(t) for t in targets])
            super().__init__(images, targets, *args, **kwargs)

    monkeypatch.setattr(training, "calibrate", spy)
    monkeypatch.setattr(training, "PatchSampler", Sampler)
    images, labels = nuclei
    few = []
    for lab in labels[:2]:  # three outlined nuclei and a painted band on each
        out = np.zeros(lab.shape, np.uint16)
        out[:5] = np.where(lab[:5] == 0, 1, 0)
        for new, old in enumerate(np.unique(lab[lab > 0])[:3], start=2):
            out[lab == old] = new
        few.append(out)
    events = []
    train(images[:2], few, labels_kind="sparse-instances", steps=2, width=4, depth=2, patch=32,
          batch_size=2, device="cpu", init=None, callback=events.append)  # fmt: skip
    train_targets = trained[0]  # the first sampler is the training one, in image order
    assert len(seen["sizes"]) == 6  # the prior knows every outlined object
    scored = 0
    for i, truth in enumerate(seen["truths"]):
        for v in np.unique(truth.objects[truth.objects > 0]):
            assert (train_targets[i][truth.objects == v] == IGNORE).all()  # never in the loss
            scored += 1
        assert (train_targets[i][truth.labeled] == IGNORE).all()  # background neither
    assert 1 <= scored < 6
    calibrated = next(e for e in events if isinstance(e, ev.Calibrated))
    noun = "object" if scored == 1 else "objects"
    assert calibrated.measured_on.startswith(f"{scored} held-out outlined {noun} of 6 + ")


def test_calibration_turns_the_seed_cut_on_for_touching_objects_only():
    from .test_postprocess import _touching_disks

    probs, truth = _touching_disks()
    pairs = 11  # 22 held-out objects: enough to search (FEW_OBJECTS)
    probs = np.concatenate([probs] * pairs, axis=1)  # stacked along y, ids made unique
    truth = np.concatenate([np.where(truth > 0, truth + 2 * i, 0) for i in range(pairs)])
    settings, record = calibrate([probs], [Truth(truth)], 2)
    assert settings.split > 0 and record["chosen_ap"] == 1.0 > record["start_ap"]
    assert record["split"] == [0.0, settings.split]
    apart, truth = blobs(rows=7)  # separate cells: nothing to cut, the start (off) stays
    settings, record = calibrate([apart], [Truth(truth)], 2)
    assert record["searched"] and settings.split == 0.0


def test_with_postprocess_takes_a_whole_config_or_single_fields(tiny_model):
    model, _ = tiny_model
    own = model.config.postprocess
    assert model.with_postprocess() is model and model.with_postprocess(own) is model
    one = model.with_postprocess(seed_threshold=0.55, min_size=None)  # None: keep the model's
    assert one.config.postprocess == replace(own, seed_threshold=0.55)
    assert one.network is model.network and model.config.postprocess == own  # a copy
    whole = PostprocessConfig(0.6, 0.4, 7, object_size=own.object_size, split=0.25)
    assert model.with_postprocess(whole).config.postprocess == whole
    assert model.with_postprocess(whole, min_size=9).config.postprocess.min_size == 9
    with pytest.raises(TypeError, match="seed"):
        model.with_postprocess(seed=0.5)


def test_a_few_held_out_objects_choose_only_the_foreground_threshold_on_their_outlines():
    """3 held-out cells cannot tell settings apart by AP@0.5, but they measure how well they
    are outlined over hundreds of pixels: with no held-out background only the foreground
    threshold is searched, AP first and then the cells' IoU, the seed threshold and waist
    cut stay the start's and the minimum size is the prior."""
    from napari_unet.calibrate import FEW_OBJECTS

    probs, truth = blobs(rows=1)  # 3 cells, 3 bits of debris
    fat = np.zeros(truth.shape, bool)  # a halo of 3 px round each cell: foreground up to 0.7
    for k in range(3):
        y, x = 10, 10 + k * 50
        fat[y - 3 : y + 23, x - 3 : x + 23] = True
    halo = fat & (truth == 0)
    probs[:, halo] = np.array([0.25, 0.7, 0.05])[:, None]
    start = PostprocessConfig(seed_threshold=0.6, fg_threshold=0.4, split=0.25)
    outlined = Truth(truth, labeled=truth > 0)  # the cells held out, no background
    assert score([probs], [outlined], start, 2) == 1.0  # matched though fat: AP cannot tell
    settings, record = calibrate([probs], [outlined], 2, start, sizes=np.full(3, 400))
    assert record["objects"] == 3 < FEW_OBJECTS and record["search"] == "overlap"
    assert record["searched"] and record["background_pixels"] == 0
    assert (settings.seed_threshold, settings.split) == (0.6, 0.25)  # never searched
    assert {(t[0], t[2], t[3]) for t in record["tried"]} == {(0.6, 100, 0.25)}
    assert settings.fg_threshold >= 0.75 and settings.min_size == 100
    assert record["overlap"] == [pytest.approx(400 / 676, abs=1e-4), 1.0]  # 26x26 -> 20x20
    assert record["start_ap"] == record["chosen_ap"] == 1.0
    # a model fine-tuned from a start model keeps the start's threshold: nothing searched
    kept, record = calibrate([probs], [outlined], 2, start, np.full(3, 400), inherited=True)
    assert record["search"] == "none" and not record["searched"]
    assert kept.fg_threshold == 0.4 and kept.min_size == 100  # the prior all the same
    # the same, scored by AP alone (a tie keeps the start): the cells stay fat
    import napari_unet.calibrate as cal

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cal, "better", lambda rank, best: rank[0] > best[0] + 1e-9)
        assert calibrate([probs], [outlined], 2, start, np.full(3, 400))[0].fg_threshold == 0.4
    # the same objects 7 times over: a search of everything
    many, truths = blobs(rows=7)
    _, record = calibrate([many], [Truth(truths)], 2, start, sizes=np.full(21, 400))
    assert record["search"] == "all" and len(record["tried"]) > 10
    event = ev.Calibrated(9, 0.6, 0.8, 100, 1.0, 1.0, "3 held-out outlined objects of 15",
                          objects=3, search="overlap", overlap=(0.59, 1.0))  # fmt: skip
    line = event.describe()
    assert "foreground threshold chosen on how well the held-out objects (3 held-out" in line
    assert "their mean IoU 0.59 -> 1.00" in line and "3 held-out objects are too few" in line
    # no held-out object at all: nothing searched, said so
    settings, record = calibrate([probs], [Truth(np.zeros_like(truth), labeled=truth > 0)], 2,
                                 start, sizes=np.full(3, 400))  # fmt: skip
    assert record["search"] == "none" and not record["searched"] and settings.fg_threshold == 0.4
    event = ev.Calibrated(9, 0.6, 0.4, 200, 0.0, 0.0, "3 held-out outlined objects of 15",
                          searched=False, objects=0)  # fmt: skip
    line = event.describe()
    assert "0 held-out objects (3 held-out outlined objects of 15) are too few" in line
    assert "->" not in line  # nothing was chosen, so no "start -> chosen"


def test_a_few_held_out_objects_and_held_out_background_choose_what_removes_debris():
    """With 3 held-out cells the seed threshold and waist cut stay the start's, but the
    debris on held-out background (here larger than the size prior) is counted: the
    minimum size or the foreground threshold that removes it is chosen."""
    probs, truth = blobs(rows=1)
    for k in range(3):  # debris of 12x12 = 144 px, above the prior (100 px) and faint
        y, x = 40, 10 + k * 50
        probs[:, y : y + 12, x : x + 12] = np.array([0.35, 0.6, 0.05])[:, None, None]
    labels = np.zeros(truth.shape, np.uint16)
    labels[truth > 0] = truth[truth > 0] + 1
    labels[36:56] = 1  # background painted (and held out) over the debris
    held = truth_from_labels(labels, "sparse-instances")
    start = PostprocessConfig(seed_threshold=0.6, fg_threshold=0.4, split=0.25)
    settings, record = calibrate([probs], [held], 2, start, sizes=np.full(3, 400))
    assert record["search"] == "background" and record["searched"]
    assert record["background_pixels"] == 20 * 160
    assert record["false_positives"] == [3, 0] and record["start_ap"] == pytest.approx(0.5)
    assert record["chosen_ap"] == 1.0 and score([probs], [held], settings, 2) == 1.0
    assert (settings.seed_threshold, settings.split) == (0.6, 0.25)  # never searched
    assert {t[0] for t in record["tried"]} == {0.6} and {t[3] for t in record["tried"]} == {0.25}
    assert settings.min_size > 144 or settings.fg_threshold > 0.6
    # the cells themselves stay: the minimum size never goes above a small labeled object
    assert settings.min_size <= 400
    event = ev.Calibrated(9, 0.6, settings.fg_threshold, settings.min_size, 1.0, 0.5,
                          "3 held-out outlined objects of 15", searched=True, objects=3,
                          background_pixels=3200, search="background")  # fmt: skip
    line = event.describe()
    assert "false objects on the held-out background (3 held-out outlined objects" in line
    assert "0.500 -> 1.000" in line and "seed threshold and waist cut kept: 3 held-out" in line
    # too little background (room for fewer than BACKGROUND_OBJECTS median objects): the
    # foreground threshold alone, on the cells' outlines
    labels[36:56] = 0
    labels[40:44, :100] = 1  # 400 px: one median object
    small = truth_from_labels(labels, "sparse-instances")
    settings, record = calibrate([probs], [small], 2, start, sizes=np.full(3, 400))
    assert record["search"] == "overlap" and record["background_pixels"] == 400
    assert settings.min_size == 100 and {t[2] for t in record["tried"]} == {100}


def test_a_scratch_model_on_balanced_sparse_instances_starts_from_a_high_foreground_threshold():
    """The balanced loss spreads a scratch network's foreground: its calibration starts
    from BALANCED_FG_THRESHOLD; dense instances, an unbalanced loss and a start model's
    own thresholds are left as they were."""
    from napari_unet.calibrate import BALANCED_FG_THRESHOLD, scratch_start

    assert scratch_start("sparse-instances", 0.5).fg_threshold == BALANCED_FG_THRESHOLD == 0.9
    default = PostprocessConfig().fg_threshold
    assert scratch_start("sparse-instances", 0.0).fg_threshold == default
    assert scratch_start("instances", 0.5).fg_threshold == default
    assert scratch_start("instances", 0.5) == PostprocessConfig()


def test_training_from_scratch_on_outlined_objects_starts_calibrating_there(nuclei):
    images, labels = nuclei
    sparse = []
    for lab in labels[:3]:
        ids = np.unique(lab[lab > 0])[:3]
        out = np.zeros(lab.shape, np.uint16)
        out[:6] = 1  # a background stroke along the top
        for new, old in enumerate(ids, start=2):
            out[lab == old] = new
        sparse.append(out)
    model = train(images[:3], sparse, labels_kind="sparse-instances", steps=3, width=4,
                  depth=2, patch=48, batch_size=2, device="cpu", init=None)  # fmt: skip
    search = model.history["sessions"][-1]["postprocess_search"]
    assert search["start"][1] == 0.9
    assert model.config.postprocess.fg_threshold in (0.9, *FG_THRESHOLDS)


def test_the_model_card_says_what_each_search_chose_on():
    from napari_unet.bioimageio import _validation_lines

    def card(**search):
        record = {"metric": "AP@0.5", "chosen": [0.8, 0.9, 100], "objects": 2, "searched": True,
                  "start_ap": 0.5, "chosen_ap": 1.0, "images": 1, **search}  # fmt: skip
        session = {"labels_kind": "sparse-instances", "postprocess_search": record}
        return " ".join(_validation_lines({"sessions": [session]}))

    overlap = card(search="overlap", overlap=[0.61, 0.87])
    assert "foreground threshold chosen on how well 2 held-out objects are outlined" in overlap
    assert "mean best IoU [0.61, 0.87]" in overlap and "AP@0.5 0.5 -> 1.0" in overlap
    background = card(search="background", background_pixels=3200)
    assert "false objects on 3200 px of held-out background and 2 held-out" in background
    assert "too few to search them on" in card(search="none", searched=False, chosen_ap=None)
    assert "Instance settings chosen on 1 image(s), 25 objects" in card(search="all", objects=25)
