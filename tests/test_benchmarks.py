"""Every benchmark runs end to end at a tiny size and prints its table and summary.

Timings are not checked here (they are what the benchmarks report); this only keeps the
scripts working as the code changes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))


def test_every_benchmark_is_covered():
    assert SCRIPTS == [
        "bench_3d.py",
        "bench_accuracy.py",
        "bench_builtin.py",
        "bench_calibrate.py",
        "bench_ceiling.py",
        "bench_few_labels.py",
        "bench_few_strokes_em.py",
        "bench_generalisation.py",
        "bench_gui.py",
        "bench_hitl.py",
        "bench_large_zarr.py",
        "bench_predict.py",
        "bench_proposals.py",
        "bench_start_fit.py",
        "bench_time_to_accuracy.py",
        "bench_touching.py",
        "bench_train.py",
        "bench_zoom.py",
    ]


MORE = [
    "bench_hitl.py --proposals --regions next",
    "bench_hitl.py --proposals --accept-all --first-run 1 --json run.json --guard models",
    "bench_hitl.py --init scratch --proposals --round-strokes 1 --continue-lr 1e-3",
    "bench_few_labels.py --label-group --test-split large --test-images 2",
    "bench_ceiling.py --min-sizes 4,2 --fgs 0.7 --zoomed-fgs 0.9 --edge --centre-half",
    "bench_calibrate.py --scratch 1 --rules overlap --held-strokes 1 --zoom-each",
]


@pytest.mark.parametrize("script", [*SCRIPTS, *MORE])
def test_benchmark_runs_tiny(script, tmp_path):
    script, *flags = script.split()
    if script in ("bench_gui.py", "bench_proposals.py") and not os.environ.get("DISPLAY"):
        pytest.fail(f"{script} needs a display: run the suite under xvfb-run (make test does)")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--tiny", *flags],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.lower().startswith("summary") for line in lines), result.stdout
    assert "nan" not in lines[-1].lower()
    if "--json" in flags:  # the rows, with what they ran on
        saved = json.loads((tmp_path / flags[flags.index("--json") + 1]).read_text())
        assert saved["rows"] and saved["environment"]["numpy"] == np.__version__
    if "--guard" in flags:  # the rounds trained into the run's folder, as the widget does
        assert (tmp_path / "models" / "run-1" / "training.json").is_file()


def test_few_labels_compares_start_models_side_by_side(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_few_labels.py"), "--tiny", "--ways",
         "sparse-instances-init", "--init", "builtin:nuclei", "--init", "scratch"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.splitlines()[-1]
    assert "sparse-instances-init builtin:nuclei " in summary, summary
    assert "sparse-instances-init scratch " in summary, summary
    # the start model scored on the test images, and the product's verdicts checked with it
    assert "| start model builtin:nuclei, no training |" in result.stdout
    assert "the product's verdict on the start model, right on the test images: " in (result.stdout)


def splits_module():
    """benchmarks/_splits.py (the split benchmarks' helpers)."""
    sys.path.insert(0, str(BENCHMARKS))
    import _splits

    return _splits


def test_few_labels_keeps_k_objects_and_paints_background_only():
    from scipy import ndimage

    labels = np.zeros((96, 128), np.uint16)
    corners = [(8, 8), (8, 60), (40, 20), (40, 90), (70, 50), (20, 100)]
    for i, (y, x) in enumerate(corners):
        labels[y : y + 12, x : x + 12] = 5 + 3 * i  # ids need not start at 1 or be consecutive
    out = splits_module().few_labels(labels, 2, 3, np.random.default_rng(0), width=5, margin=3)
    assert out.dtype == np.uint16 and out.shape == labels.shape
    assert sorted(np.unique(out)) == [0, 1, 2, 3]
    kept = set()
    for new in (2, 3):  # each new id is one whole truth object
        (old,) = np.unique(labels[out == new])
        assert old > 0 and np.array_equal(labels == old, out == new)
        kept.add(int(old))
    assert len(kept) == 2
    others = (labels > 0) & ~np.isin(labels, list(kept))
    assert not out[others].any()  # the other objects stay unlabeled
    strokes = out == 1
    assert ndimage.distance_transform_edt(labels == 0)[strokes].min() >= 3
    assert 1 <= ndimage.label(strokes)[1] <= 3
    again = splits_module().few_labels(labels, 2, 3, np.random.default_rng(0))
    assert np.array_equal(out, again)  # seeded
    everything = splits_module().few_labels(labels, 10, 0, np.random.default_rng(1))
    assert sorted(np.unique(everything)) == [0, *range(2, 8)]  # K > objects: all, no strokes


def test_em_strokes_land_on_their_class_only():
    """bench_few_strokes_em's labels: membrane strokes on membrane, cell strokes inside cells."""
    import argparse

    from scipy import ndimage

    sys.path.insert(0, str(BENCHMARKS))
    import _synthetic
    import bench_few_strokes_em as em

    _, truth = _synthetic.membranes((96, 96), cells=10, seed=3)
    args = argparse.Namespace(membrane_strokes=6, cell_strokes=4)
    out = em.strokes_on(truth, args, np.random.default_rng(0))
    assert sorted(np.unique(out)) == [0, 1, 2]
    assert (truth[out == 1] == 0).all()  # membrane strokes stay on membrane
    assert ndimage.distance_transform_edt(truth > 127)[out == 2].min() >= 2  # inside cells
    assert np.count_nonzero(out) < 0.3 * out.size  # a few strokes, not the image
    assert 1 <= ndimage.label(out == 2)[1] <= 4


def test_splits_of_the_tiny_data(tmp_path):
    sp = splits_module()
    data = sp.write_tiny(tmp_path / "data")
    assert sp.split(data, "random")[1] == ["synthetic025"]
    assert sp.split(data, "large")[1] == [f"synthetic0{i}" for i in (20, 21, 22, 23)]
    train, test = sp.split(data, "dense")
    assert test == ["synthetic024"] and len(train) == 11
    assert "synthetic022" not in sp.split(data, "random", within=(256, 256))[0]
    assert sp.cap(train, 3) == sp.cap(list(reversed(train)), 3)
    with pytest.raises(ValueError, match="0 test"):
        sp.split(data, "hires")


def test_pooled_ap_recovers_the_counts():
    rows = [  # TP 3, FP 1, FN 2: AP 3 / 6; TP 0 of nothing: AP 1
        {"ap50": 0.5, "n_true": 5, "n_pred": 4},
        {"ap50": 1.0, "n_true": 0, "n_pred": 0},
    ]
    result = splits_module().pooled(rows)
    assert result["tp"] == 3 and result["pooled_ap50"] == 0.5 and result["ap50"] == 0.75
    assert result["count_ratio"] == 0.8


def test_the_simulated_user_fixes_the_k_worst_objects_only():
    sys.path.insert(0, str(BENCHMARKS))
    from bench_hitl import correct

    truth = np.zeros((64, 64), np.uint16)
    truth[2:12, 2:12] = 1  # found
    truth[20:30, 2:12] = 2  # missed (small)
    truth[40:60, 2:22] = 3  # missed (large)
    truth[2:12, 30:40] = 4  # merged with 5 ...
    truth[2:12, 40:50] = 5
    pred = np.zeros_like(truth)
    pred[2:12, 2:12] = 7
    pred[2:13, 30:50] = 8  # ... into one object (IoU 0.45 with each)
    pred[48:60, 48:60] = 9  # a false positive on background
    labels, touched = correct(truth, pred, fixes=10)
    assert touched == 5  # misses 2 and 3, merged 4 and 5, the false positive
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}
    assert (labels[48:60, 48:60] == 1).all()  # painted background
    assert (labels[2:12, 2:12] == 0).all()  # the right object is left alone
    for t in (2, 3, 4, 5):  # each outlined whole with its own id
        assert len(np.unique(labels[truth == t])) == 1 and labels[truth == t][0] >= 2
    labels, touched = correct(truth, pred, fixes=2)
    # the worst two: no overlap at all, the largest first (miss 3, then the false positive)
    assert touched == 2 and np.count_nonzero(labels) == (truth == 3).sum() + 144


def test_the_simulated_user_predicts_with_the_model_the_product_advises(tmp_path, monkeypatch):
    import napari_unet
    from napari_unet.events import Finished

    sys.path.insert(0, str(BENCHMARKS))
    from bench_hitl import train_round

    trained, start, previous = object(), object(), object()
    folder = tmp_path / "run-0"
    end = {}
    calls = []

    def fake_train(images, labels, callback=None, **kwargs):
        calls.append(kwargs)
        if callback is not None:
            callback(Finished(step=2, reason="steps", elapsed=1.0, **end))
        return trained

    monkeypatch.setattr(napari_unet, "train", fake_train)
    monkeypatch.setattr(napari_unet, "load_model", lambda path: previous)
    end.update(path=str(folder))  # the new model kept
    assert train_round(folder, start, [], [], init="x") == (trained, trained)
    assert calls[-1]["out"] == folder and calls[-1]["init"] == "x"
    end.update(path=str(folder), start_model="x")  # "Use x": the start did better
    assert train_round(folder, start, [], []) == (trained, start)
    end.update(path=f"{folder}.rejected", start_model=None)  # the guard kept the previous
    assert train_round(folder, start, [], []) == (trained, previous)
    assert train_round(None, start, [], []) == (trained, trained)  # no --guard
    assert "out" not in calls[-1]


def test_the_simulated_user_accepts_right_proposals_with_a_click_and_fixes_the_rest():
    sys.path.insert(0, str(BENCHMARKS))
    from bench_hitl import accept_and_correct

    truth = np.zeros((64, 64), np.uint16)
    truth[2:12, 2:12] = 1  # proposed right (IoU 1)
    truth[20:30, 2:12] = 2  # proposed a bit small: IoU 0.6, not accepted, outlined
    truth[40:60, 2:22] = 3  # missed
    pred = np.zeros_like(truth)
    pred[2:12, 2:12] = 7
    pred[20:26, 2:12] = 8
    pred[48:60, 48:60] = 9  # a false positive on background
    labels, clicks, fixed = accept_and_correct(truth, pred, fixes=10)
    assert clicks == 1 and fixed == 3  # object 2 and 3 outlined, the false positive painted
    assert (labels[2:12, 2:12] == 2).all()  # the accepted proposal, first object id
    assert len(np.unique(labels[truth == 2])) == 1 and labels[22, 5] >= 3
    assert len(np.unique(labels[truth == 3])) == 1 and labels[50, 10] >= 3
    assert labels[22, 5] != labels[50, 10]
    assert (labels[48:60, 48:60] == 1).all()
    _, clicks, fixed = accept_and_correct(truth, pred, fixes=1)
    assert clicks == 1 and fixed == 1
    # no fix painted background (only a miss fixed): the strokes give the labels some
    only_right = np.where(pred == 7, 7, 0).astype(np.uint16)
    plain, _, _ = accept_and_correct(truth, only_right, fixes=1)
    assert 1 not in plain
    rng = np.random.default_rng(0)
    stroked, clicks, actions = accept_and_correct(truth, only_right, 1, strokes=3, rng=rng)
    assert clicks == 1 and actions == 1 + 3
    painted = stroked == 1
    assert painted.any() and not (painted & (truth > 0)).any()  # on true background only
    assert np.array_equal(stroked[~painted], plain[~painted])  # nothing else changed


def test_the_simulated_user_accepts_all_then_fixes_each_wrong_proposal_with_a_fill():
    sys.path.insert(0, str(BENCHMARKS))
    from bench_hitl import accept_and_correct

    truth = np.zeros((64, 64), np.uint16)
    truth[2:12, 2:12] = 1  # proposed right
    truth[20:30, 2:12] = 2  # proposed a bit small (IoU 0.6): erased, then outlined
    truth[40:60, 2:22] = 3  # missed: outlined
    pred = np.zeros_like(truth)
    pred[2:12, 2:12] = 7
    pred[20:26, 2:12] = 8
    pred[48:60, 48:60] = 9  # a false positive on background: filled as background
    labels, clicks, fixed = accept_and_correct(truth, pred, fixes=10, accept_all=True)
    assert clicks == 1 + 2 and fixed == 2  # accept all, two fill clicks; two outlines
    assert (labels[2:12, 2:12] == 2).all()
    assert (labels[48:60, 48:60] == 1).all()  # the false positive: painted background
    assert len(np.unique(labels[truth == 2])) == 1 and labels[22, 5] >= 3  # the true outline
    assert len(np.unique(labels[truth == 3])) == 1 and labels[50, 10] >= 3
    assert labels[22, 5] != labels[50, 10] and (labels[truth == 0] <= 1).all()
    _, clicks, fixed = accept_and_correct(truth, pred, fixes=1, accept_all=True)
    assert clicks == 3 and fixed == 1  # every wrong one still needs its fill click


def test_the_simulated_user_labels_a_whole_region_accepting_right_proposals():
    sys.path.insert(0, str(BENCHMARKS))
    from bench_hitl import label_region

    truth = np.zeros((64, 64), np.uint16)
    truth[2:12, 2:12] = 1  # inside the region, proposed right
    truth[20:30, 25:40] = 2  # reaches into the region from outside, not proposed
    truth[50:60, 50:60] = 3  # outside the region: left alone
    pred = np.zeros_like(truth)
    pred[2:12, 2:11] = 5  # IoU 0.9: accepted as it is
    before = np.zeros_like(truth)
    before[5, 5] = 2  # painted already: kept
    region = (slice(0, 32), slice(0, 32))
    labels, actions = label_region(truth, pred, region, before)
    assert actions == 3  # one click, one outline, one background stroke
    assert (
        labels[5, 5] == 2 and labels[3, 3] >= 3 and labels[3, 11] == 0
    )  # the proposal's pixels only
    assert len(np.unique(labels[truth == 2])) == 1 and labels[25, 38] >= 3  # whole, own id
    assert labels[25, 38] != labels[3, 3]
    assert (labels[truth == 3] == 0).all() and (labels[40:, :] == 0).all()
    assert (labels[region][truth[region] == 0] >= 1).all()  # the region's background painted
    _, actions = label_region(truth, None, region, before)
    assert actions == 3  # without proposals: two outlines, one stroke


def test_a_random_region_holds_no_label_yet():
    sys.path.insert(0, str(BENCHMARKS))
    from bench_hitl import choose_region

    from napari_unet.proposals import REGION_SIZE

    labels = [np.ones((REGION_SIZE, REGION_SIZE), np.uint16), np.zeros((400, 300), np.uint16)]
    labels[1][:200, :] = 2
    rng = np.random.default_rng(0)
    for _ in range(5):
        i, region = choose_region("random", None, [None, None], labels, rng)
        assert i == 1 and not labels[1][region].any()
        assert region[0].stop - region[0].start == REGION_SIZE
    labels[1][:] = 1
    assert choose_region("random", None, [None, None], labels, rng) is None


def test_gpu_check_runs_its_steps_and_prints_one_table(tmp_path):
    """benchmarks/gpu_check.sh --tiny: the GPU set's script, here on the CPU, one step."""
    env = {**os.environ, "GPU_CHECK_STEPS": "train", "OUT": str(tmp_path / "out")}
    env["PYTHON"] = sys.executable
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--tiny"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "| step | wall s | summary |" in lines
    (row,) = [line for line in lines if line.startswith("| train |")]
    assert "pipeline / bare step" in row and "FAILED" not in row
    assert lines[-1].startswith("summary: gpu_check.sh 1 steps in")
    assert (tmp_path / "out" / "gpu_check.md").read_text().count("| train |") == 1
    bad = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--fast"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr


def test_ceiling_edge_rule_keeps_objects_cut_by_the_edge_only():
    sys.path.insert(0, str(BENCHMARKS))
    from bench_ceiling import centre_half, edge_spared

    probs = np.zeros((3, 64, 64), np.float32)
    probs[0] = 1.0
    for y, x, r in ((0, 30, 3), (32, 32, 3), (40, 8, 1)):  # cut by the edge, inside, tiny
        box = (slice(max(0, y - r), y + r + 1), slice(x - r, x + r + 1))
        probs[(0, *box)], probs[(1, *box)] = 0.0, 1.0
    from napari_unet.postprocess import instances_from_probs

    plain = instances_from_probs(probs, 2, min_size=40)
    spared = edge_spared(probs, 2, min_size=40)
    assert plain.max() == 1 and plain[32, 32] > 0  # 49 px kept, the 28 px at the edge dropped
    assert spared.max() == 2 and spared[0, 30] > 0 and spared[32, 32] > 0
    assert spared[40, 8] == 0  # 9 px inside: below the minimum size, not at the edge
    assert centre_half(np.arange(16).reshape(4, 4)).tolist() == [[5, 6], [9, 10]]


def _hitl_json(path: Path, run: int, aps: list[float], env: dict | None = None, **changed) -> str:
    args = {"init": "scratch", "test_split": "large", "test_images": 24, "rounds": len(aps) - 1,
            "steps": 800, "no_dense": True, "distill": None, "runs": 1, "first_run": run,
            "data": f"/somewhere/{run}", "plot": None, "json": str(path), **changed}  # fmt: skip
    rows = [{"run": run, "round": k, "touched": 6 + 5 * k, "ap50": ap} for k, ap in enumerate(aps)]
    env = env or {"torch": "2.13.0", "numpy": "2.4.6"}
    path.write_text(json.dumps({"args": args, "environment": env, "rows": rows}))
    return str(path)


def test_hitl_merges_runs_made_apart_and_refuses_other_benchmarks(tmp_path):
    a = _hitl_json(tmp_path / "a.json", 0, [0.6, 0.7])
    b = _hitl_json(tmp_path / "b.json", 1, [0.5, 0.8])

    def merge(*paths: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(BENCHMARKS / "bench_hitl.py"), "--merge", *paths,
             "--plot", str(tmp_path / "m.png"), "--json", str(tmp_path / "m.json")],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip

    result = merge(a, b)
    assert result.returncode == 0, result.stderr
    assert "| 1 | 1 | 11 | 0.800 |" in result.stdout  # every run's rows
    assert "| 1 | 11 | 0.750 ± 0.071 |" in result.stdout  # round 1 over both (sample std)
    assert result.stdout.splitlines()[-1].startswith("summary: mean AP@0.5 on 24 images")
    assert "2 run(s): 0 0.550; 1 0.750" in result.stdout.splitlines()[-1]
    assert (tmp_path / "m.png").stat().st_size > 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert len(merged["rows"]) == 4 and merged["args"]["runs"] == 2
    assert merged["environment"] == {"torch": "2.13.0", "numpy": "2.4.6"}  # the runs', kept
    assert "warning" not in result.stdout

    elsewhere = {"torch": "2.13.0", "numpy": "2.3.0"}  # merged, with a warning naming it
    result = merge(a, _hitl_json(tmp_path / "f.json", 1, [0.5, 0.8], env=elsewhere))
    assert result.returncode == 0, result.stderr
    assert "f.json: another environment: numpy 2.3.0 there, 2.4.6 in" in result.stdout

    other = _hitl_json(tmp_path / "c.json", 2, [0.6, 0.7], steps=200)
    result = merge(a, other)
    assert result.returncode != 0 and "c.json: steps is 200 there, 800 in" in result.stderr
    result = merge(a, _hitl_json(tmp_path / "d.json", 0, [0.6, 0.7]))
    assert result.returncode != 0 and "d.json: run 0 is in another file too" in result.stderr
    (tmp_path / "e.json").write_text("{}")
    result = merge(a, str(tmp_path / "e.json"))
    assert result.returncode != 0 and "e.json: not a JSON file written by" in result.stderr


def test_few_labels_counts_the_verdicts_the_test_images_agree_with():
    sys.path.insert(0, str(BENCHMARKS))
    from bench_few_labels import verdicts

    rows = [  # the start model "a" scores 0.7 on the test images
        {"init": "a", "ap50": 0.6, "held_out_iou": [0.5, 0.4],  # start better: IoU wrong
         "held_out_objects": {"start_better": True}},  # the objects right
        {"init": "a", "ap50": 0.8, "held_out_iou": [0.5, 0.4],  # new better: both right
         "held_out_objects": {"start_better": False}},
        {"init": "a", "ap50": 0.8, "held_out_iou": [0.3, 0.4], "held_out_objects": None},
        {"init": None, "ap50": 0.1, "held_out_iou": [None, None]},  # from scratch: not counted
    ]  # fmt: skip
    assert verdicts(rows, {"a": 0.7}) == "validation IoU 1/3; held-out objects 2/2"
    assert verdicts(rows[3:], {"a": 0.7}) == ""
