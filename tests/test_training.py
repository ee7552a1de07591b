"""Tiny CPU trainings: train -> save -> load -> predict, events, cancel, resume."""

import itertools
import time

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet import events as ev
from napari_unet.budget import PHASES
from napari_unet.checkpoint import load_checkpoint
from napari_unet.config import TrainConfig
from napari_unet.events import drain
from napari_unet.metrics import evaluate_pair
from napari_unet.recipes import get_recipe
from napari_unet.request import TrainRequest
from napari_unet.store import load_model
from napari_unet.training import TrainingRun, train, train_iter, train_request_iter

from .conftest import SMALL, make_nuclei


def fake_clock(step=1.0):
    counter = itertools.count()
    return lambda: next(counter) * step


def test_round_trip_segments_unseen_image(tiny_model):
    model, path = tiny_model
    loaded = load_model(path)
    image, truth = make_nuclei(seed=99)
    inst = nu.predict(loaded, image, instances=True, device="cpu")
    assert inst.shape == image.shape and inst.dtype.kind == "u"
    scores = evaluate_pair(truth, inst)
    assert scores["iou"] > 0.6  # the foreground is found on an image never seen
    assert scores["n_pred"] >= 1
    # the in-memory and the reloaded model agree
    a = nu.predict_proba(model, image, device="cpu")
    b = nu.predict_proba(loaded, image, device="cpu")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert loaded.history["steps"] == 40
    assert loaded.history["sessions"][0]["data"][0]["labels"]  # provenance hashes


def test_events_and_step_budget(nuclei):
    images, labels = nuclei
    gen = train_iter(images, labels, labels_kind="instances", steps=6, **SMALL)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            model = stop.value
            break
    assert isinstance(events[0], ev.TrainStarted) and events[0].device.startswith("cpu")
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    assert [e.step for e in steps] == list(range(1, 7))
    assert all(np.isfinite(e.loss) and e.images_per_s > 0 for e in steps)
    assert any(isinstance(e, ev.Validated) and 0 <= e.iou <= 1 for e in events)
    assert isinstance(events[-1], ev.Finished) and events[-1].reason == "steps"
    assert model.history["steps"] == 6 and not model.network.training


def test_time_budget_stops_and_lr_decays(nuclei):
    images, labels = nuclei
    events = []
    model = train(
        images,
        labels,
        labels_kind="instances",
        time_budget=12,
        clock=fake_clock(),
        callback=events.append,
        **SMALL,
    )
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    assert events[-1].reason == "time"
    assert 1 <= len(steps) < 12
    assert steps[-1].lr < max(e.lr for e in steps)
    assert model.history["steps"] == len(steps)


def test_the_time_budget_counts_every_phase_from_the_request(nuclei, tmp_path):
    images, labels = nuclei
    out = tmp_path / "m"
    request = TrainRequest.from_keywords(labels_kind="instances", time_budget=4, out=out, **SMALL)
    began = time.perf_counter() - 100  # asked for 100 s ago: the budget is long spent
    events = []
    model = drain(train_request_iter(images[:2], labels[:2], request, began=began), events.append)
    finished = events[-1]
    assert finished.reason == "time" and model.history["steps"] == 1  # one step at least
    phases = model.history["sessions"][-1]["phases"]
    assert set(phases) == {*PHASES, "total"} and phases["prepare"] >= 100
    assert sum(phases[k] for k in PHASES) == pytest.approx(phases["total"], abs=0.05)
    assert phases["validate"] > 0 and phases["calibrate"] > 0 and phases["save"] > 0
    assert finished.phases == {k: phases[k] for k in PHASES}
    assert finished.describe_time().startswith("time: prepare 1")
    on_disk = load_model(out).history["sessions"][-1]["phases"]  # training.json says it too
    assert set(on_disk) == set(phases) and on_disk["prepare"] == phases["prepare"]
    assert on_disk["total"] == pytest.approx(phases["total"], abs=0.5)


def test_the_steps_end_early_enough_for_the_finish(nuclei):
    images, labels = nuclei
    request = TrainRequest.from_keywords(labels_kind="instances", time_budget=60, **SMALL)
    run = TrainingRun.setup(images[:2], labels[:2], request, model=None, clock=lambda: 0.0,
                            control=None, began=-5.0)  # fmt: skip
    run.started()
    budget = run.budget
    assert budget.phases["prepare"] == 5.0
    budget.val_seconds, budget.save_seconds = 0.0, 0.0
    search = budget.reserve()  # nothing measured yet: the search's share only
    assert search == pytest.approx(0.1 * 60)
    budget.val_seconds, budget.save_seconds = 2.0, 1.0
    # final validation, save, and predicting the calibration images (from the validation's speed)
    assert budget.reserve() > search + 3.0
    assert budget.deadline() == pytest.approx(-5.0 + 60 - budget.reserve())
    assert budget.progress(0, budget.deadline()) == pytest.approx(1.0)


def test_cancel_leaves_loadable_model(nuclei, tmp_path):
    images, labels = nuclei
    out = tmp_path / "m"
    gen = train_iter(images, labels, labels_kind="instances", steps=1000, out=out, **SMALL)
    done = 0
    for e in gen:
        if isinstance(e, ev.TrainStep):
            done = e.step
            if done == 3:
                break
    gen.close()  # what a cancelled worker does
    model = load_model(out)
    assert model.history["steps"] == 3
    assert load_checkpoint(out) is not None


def test_resume_continues_with_optimizer_state(nuclei, tmp_path):
    images, labels = nuclei
    out = tmp_path / "m"
    first = train(images, labels, labels_kind="instances", steps=4, out=out, **SMALL)
    opt_state, state = load_checkpoint(out)
    assert state["step"] == 4 and opt_state["state"]
    before = {k: v.clone() for k, v in first.network.state_dict().items()}
    events = []
    second = train(images, labels, steps=3, out=out, resume=True, callback=events.append, **SMALL)
    assert events[0].start_step == 4
    assert [e.step for e in events if isinstance(e, ev.TrainStep)] == [5, 6, 7]
    assert second.history["steps"] == 7 and len(second.history["sessions"]) == 2
    # it continued from the saved weights, not from a fresh network
    w = "down.0.0.weight"
    assert not torch.equal(second.network.state_dict()[w], before[w])
    assert torch.allclose(second.network.state_dict()[w], before[w], atol=0.1)


def test_a_resumed_3d_model_trains_with_the_3d_defaults(tmp_path):
    """Resuming (automatic start, the default) once took the 2D recipe's patch and batch
    for a 3D network: crops of 128^3 in eights."""
    rng = np.random.default_rng(0)
    vol = rng.random((16, 32, 32)).astype(np.float32)
    lab = np.zeros(vol.shape, np.uint16)
    lab[4:10, 8:16, 8:16], lab[4:10, 20:28, 20:28] = 1, 2
    out = tmp_path / "m"
    settings = []

    def started(event):
        if isinstance(event, ev.TrainStarted):
            settings.append(event.settings)

    kw = dict(steps=1, device="cpu", out=out, callback=started)
    train([vol], [lab], labels_kind="instances", spatial_dims=3, width=2, depth=2, **kw)
    resumed = train([vol], [lab], resume=True, **kw)
    assert resumed.config.model.spatial_dims == 3
    cpu_3d = get_recipe("fast").defaults("cpu", 3)
    assert settings[0]["patch"] == settings[1]["patch"] <= cpu_3d.patch
    assert settings[0]["batch_size"] == settings[1]["batch_size"] == cpu_3d.batch_size


def test_sparse_strokes_predict_painted_values(nuclei):
    images, labels = nuclei
    strokes = []
    for lab in labels:
        s = np.zeros(lab.shape, np.uint8)
        s[::7, :][lab[::7, :] == 0] = 1  # background strokes every 7th row
        s[(lab > 0) & (np.arange(lab.shape[1])[None] % 5 == 0)] = 2  # nuclei strokes
        strokes.append(s)
    model = train(images, strokes, labels_kind="sparse", steps=25, **SMALL)
    assert model.config.labels.class_names == ("background", "cell")
    pred = nu.predict(model, images[0], device="cpu")
    assert set(np.unique(pred)) <= {1, 2}


def test_semantic_values_written_back():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)
    lab = np.where(image > 0.5, 255, 0).astype(np.uint8)  # ISBI style 0 / 255
    model = train([image], [lab], labels_kind="semantic", steps=5, **SMALL)
    assert model.config.labels.value_map == (0, 255)
    pred = nu.predict(model, image, device="cpu")
    assert set(np.unique(pred)) <= {0, 255} and pred.dtype == np.uint8


def test_multichannel_valid_and_3d(nuclei):
    images, labels = nuclei
    two = [np.stack([im, 255 - im], axis=-1) for im in images[:2]]  # YXC
    m = train(two, labels[:2], labels_kind="instances", steps=2, padding="valid", **SMALL)
    assert m.config.model.in_channels == 2 and m.config.model.padding == "valid"
    out = nu.predict(m, two[0], device="cpu")
    assert out.shape == two[0].shape[:2]

    vol = np.stack([np.roll(images[0], z, axis=1) for z in range(16)])
    vlab = np.stack([np.roll(labels[0], z, axis=1) for z in range(16)])
    m3 = train(
        [vol],
        [vlab],
        labels_kind="instances",
        spatial_dims=3,
        steps=2,
        width=2,
        depth=2,
        patch=16,
        batch_size=1,
        device="cpu",
    )
    out3 = nu.predict(m3, vol, device="cpu")
    assert out3.shape == vol.shape


def test_paper_recipe_uses_batch_one(nuclei):
    images, labels = nuclei
    events = []
    train(
        images,
        labels,
        labels_kind="instances",
        recipe="paper",
        steps=2,
        width=4,
        depth=2,
        patch=32,
        device="cpu",
        callback=events.append,
    )
    assert events[0].settings["batch_size"] == 1 and events[0].settings["recipe"] == "paper"


def test_stack_labeled_on_a_few_slices(nuclei):
    images, labels = nuclei
    stack = np.stack(images[:4])
    lab = np.zeros(stack.shape, np.uint16)
    lab[1] = labels[1]  # only slice 1 is labeled; the others must not count as background
    events = []
    train(stack, lab, labels_kind="instances", steps=1, callback=events.append, **SMALL)
    # one labeled slice: it trains, and some of its objects and background validate
    assert (events[0].n_train, events[0].n_val) == (1, 1)
    assert " held-out objects of " in events[0].validation
    # sparse strokes on 2 of 8 slices: both train, none is held out
    big = np.concatenate([stack, stack])
    strokes = np.zeros(big.shape, np.uint8)
    strokes[2, 10:12, :] = 1
    strokes[6, :, 40:42] = 2
    events = []
    train(big, strokes, labels_kind="sparse", steps=1, callback=events.append, **SMALL)
    # both train; too few to hold a slice out, so a block of the strokes validates
    assert events[0].n_train == 2 and events[0].n_val == 1
    assert events[0].validation.startswith("held-out blocks of the labels")


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        ([np.zeros((32, 32))], [np.zeros((30, 32), np.uint8)], "shape"),
        ([np.zeros((32, 32))], [np.zeros((32, 32), np.uint8)], "no labeled pixel"),
        ([np.zeros((32, 32))], [np.zeros((32, 32), np.float32)], "must be integers"),
        ([np.zeros((32, 32))], [], "1 images but 0 label images"),
    ],
)
def test_bad_input_is_named(images, labels, message):
    with pytest.raises(ValueError, match=message):
        train(images, labels, labels_kind="sparse", steps=1, **SMALL)


def test_border_weights_option(nuclei):
    images, labels = nuclei
    events = []
    model = train(
        images,
        labels,
        labels_kind="instances",
        steps=2,
        callback=events.append,
        config=TrainConfig(border_weights=True),
        **SMALL,
    )
    assert model.config.train.border_weights
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, ev.TrainStep))
    with pytest.raises(ValueError, match="border_weights needs instance labels"):
        train(
            images,
            [(lab > 0).astype(np.uint8) for lab in labels],
            labels_kind="sparse",
            steps=1,
            config=model.config.train,
            **SMALL,
        )


def test_control_stops_and_previews(nuclei, tmp_path):
    from napari_unet.training import TrainControl

    images, labels = nuclei
    control = TrainControl(preview_every=0.0)
    control.request_preview(images[0], key="slice 0")
    out = tmp_path / "m"
    gen = train_iter(
        images, labels, labels_kind="instances", steps=1000, out=out, control=control, **SMALL
    )
    previews = []
    for e in gen:
        if isinstance(e, ev.Preview):
            previews.append(e)
            if len(previews) == 2:
                control.stop()  # from "another thread": ends after this step, and saves
        if isinstance(e, ev.Finished):
            finished = e
    assert finished.reason == "cancelled" and finished.path == str(out)
    assert previews[0].probabilities.shape == (3, *images[0].shape)
    assert previews[0].key == "slice 0"
    assert load_model(out).history["steps"] == finished.step < 1000


def test_a_failed_preview_skips_neither_validation_nor_checkpoint(nuclei, tmp_path):
    from napari_unet.training import TrainControl

    images, labels = nuclei
    control = TrainControl(preview_every=0.0)
    control.request_preview(np.zeros((2, 2, 3, 40, 40), np.float32))  # 5D: axes unknown
    events = []
    train(
        images,
        labels,
        labels_kind="instances",
        steps=5,  # a validation due at every step
        out=tmp_path / "m",
        control=control,
        config=TrainConfig(checkpoint_every=1e-9),  # a checkpoint due at every step
        callback=events.append,
        **SMALL,
    )
    assert not any(isinstance(e, ev.Preview) for e in events)
    assert control.preview_image is None  # given up after the first failure
    validated = [e.step for e in events if isinstance(e, ev.Validated)]
    saved = [e.step for e in events if isinstance(e, ev.CheckpointSaved)]
    assert validated[:5] == [1, 2, 3, 4, 5]  # step 1's validation was skipped before
    assert saved[:5] == [1, 2, 3, 4, 5]


def test_history_records_every_validation_once(nuclei):
    images, labels = nuclei
    events = []
    model = train(images, labels, labels_kind="instances", steps=4, callback=events.append, **SMALL)
    validated = [e for e in events if isinstance(e, ev.Validated)]
    # one entry per event, the final validation included, in the same order
    assert [(v[0], v[2]) for v in model.history["validation"]] == [
        (e.step, round(e.iou, 5)) for e in validated
    ]
    assert validated[-1].step == 4 and len(validated) == 5  # every step + the final one


def test_loss_is_read_every_n_steps(nuclei, monkeypatch):
    from napari_unet import trainer as tr

    reads = {"n": 0}
    real_step = tr.Trainer.train_step

    class Counted(torch.Tensor):
        def __float__(self):
            reads["n"] += 1
            return super().__float__()

    def step(self, lr):
        out = real_step(self, lr)
        assert torch.is_tensor(out["loss"])  # the step itself never reads the loss
        return {"loss": out["loss"].as_subclass(Counted)}

    monkeypatch.setattr(tr.Trainer, "train_step", step)
    images, labels = nuclei
    events = []
    model = train(
        images,
        labels,
        labels_kind="instances",
        steps=10,
        report_every=4,
        callback=events.append,
        **SMALL,
    )
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    assert [e.step for e in steps] == [4, 8, 10]
    assert all(np.isfinite(e.loss) and e.images_per_s > 0 for e in steps)
    assert reads["n"] == len(steps)  # one read of the device per report, not per step
    assert model.history["steps"] == 10
    assert [row[0] for row in model.history["log"]] == [4, 8, 10]


def test_report_every_defaults_to_each_step_on_the_cpu_only():
    from napari_unet.training import report_every_for

    assert report_every_for(torch.device("cpu")) == 1
    assert report_every_for(torch.device("cuda")) > 1
    assert report_every_for(torch.device("mps")) > 1


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_mixed_precision_branch_runs_on_the_cpu(nuclei, tmp_path, monkeypatch, precision, dtype):
    """The GPU's fast-recipe branch (autocast, GradScaler for fp16, channels_last) on the CPU."""
    from napari_unet import trainer as tr

    seen = []
    real_forward = tr.Trainer._forward

    def forward(self, image, network=None):
        logits = real_forward(self, image, network)
        weight = self.network.state_dict()["down.0.0.weight"]
        seen.append((logits.dtype, weight.is_contiguous(memory_format=torch.channels_last)))
        return logits

    monkeypatch.setattr(tr.Trainer, "_forward", forward)
    images, labels = nuclei
    out = tmp_path / "m"
    events = []
    model = train(
        images,
        labels,
        labels_kind="instances",
        steps=6,
        out=out,
        precision=precision,
        callback=events.append,
        **SMALL,
    )
    assert seen and all(d == dtype for d, _ in seen)
    assert all(channels_last for _, channels_last in seen)
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, ev.TrainStep))
    assert model.network.state_dict()["down.0.0.weight"].dtype == torch.float32
    _, state = load_checkpoint(out)
    assert ("scaler" in state) == (dtype == torch.float16)  # the scaler's state resumes
    second = train(images, labels, steps=2, out=out, resume=True, precision=precision, **SMALL)
    assert second.history["steps"] == 8


def test_precision_is_checked():
    from napari_unet.recipes import FAST, PAPER

    assert FAST.autocast(torch.device("cpu")) is None  # auto: float32 on the CPU
    assert FAST.autocast(torch.device("cpu"), "bf16") == torch.bfloat16
    assert PAPER.autocast(torch.device("cuda")) is None
    with pytest.raises(ValueError, match="precision must be one of.*got 'fp8'"):
        FAST.autocast(torch.device("cpu"), "fp8")


def test_a_tiny_model_learns_to_separate_touching_squares():
    """Touching-border targets: two large squares in contact, a faint line between them."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for k in range(4):
        lab = np.zeros((64, 96), np.uint16)
        top, left, side = 8 + 4 * (k % 2), 8 + 2 * k, 36
        lab[top : top + side, left : left + side] = 1
        lab[top : top + side, left + side : left + 2 * side] = 2
        image = np.where(lab > 0, 0.7, 0.2) + rng.normal(0, 0.03, lab.shape)
        image[top : top + side, left + side - 1 : left + side + 1] = 0.3  # a faint line
        images.append(image.astype(np.float32))
        labels.append(lab)
    config = TrainConfig(touch_border=0.1, steps=300, val_fraction=0.0, seed=0, lr=0.01)
    model = train(images, labels, labels_kind="instances", config=config, **{**SMALL, "width": 8})
    probs = nu.predict_proba(model, images[0], device="cpu")
    line = np.s_[20:36, 8 + 36 - 2 : 8 + 36 + 2]
    assert probs[2][line].mean() > 0.5  # the border between them is learned as boundary
    inst = nu.predict(model, images[0], instances=True, device="cpu")
    assert evaluate_pair(labels[0], inst)["ap50"] == 1.0  # two objects, not one


def test_compile_runs_the_step_compiled_and_reports_its_time(nuclei, tmp_path, monkeypatch):
    """TrainConfig.compile: the step runs through torch.compile (the "eager" backend here:
    the same graph capture, no kernels generated), its first step is the "compile" phase,
    and what is saved are the network's own weights, which load and predict the same."""
    from torch._dynamo.eval_frame import OptimizedModule

    from napari_unet import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    images, labels = nuclei
    request = TrainRequest.from_keywords(
        labels_kind="instances", steps=3, out=tmp_path / "m", config=TrainConfig(compile=True),
        **SMALL,
    )  # fmt: skip
    run = TrainingRun.setup(
        images[:2], labels[:2], request, model=None, clock=time.perf_counter, control=None
    )
    assert isinstance(run.trainer.step_network, OptimizedModule)
    assert run.trainer.step_network._orig_mod is run.trainer.network
    run.close()
    model = drain(train_request_iter(images[:2], labels[:2], request))
    phases = model.history["sessions"][-1]["phases"]
    assert phases["compile"] > 0 and model.history["steps"] == 3
    assert model.config.train.compile
    loaded = load_model(tmp_path / "m")
    assert all(not k.startswith("_orig_mod") for k in loaded.network.state_dict())
    image = images[2]
    np.testing.assert_allclose(
        nu.predict_proba(loaded, image, device="cpu"),
        nu.predict_proba(model, image, device="cpu"),
        atol=1e-5,
    )
    plain = train(images[:2], labels[:2], labels_kind="instances", steps=2, **SMALL)
    assert plain.history["sessions"][-1]["phases"]["compile"] == 0
