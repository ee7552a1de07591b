"""Data-parallel training on the CPU (gloo): the same model as one process, one folder,
one voice, the refusals, a killed process, resuming with another number of processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.distributed import (
    Ranks,
    _root_failure,
    check_launch,
    rank_device,
    ranks_from_env,
)
from napari_unet.store import load_model

from .conftest import default_sigint, make_nuclei, write_nuclei_folders
from .test_cli import run_cli

SMALL_NET = ["--width", "4", "--depth", "2", "--patch", "32", "--init", "scratch"]


def sparse_pairs(n=4):
    """Images with a few outlined nuclei and background strokes (sparse-instances): crops
    hold very different numbers of labeled pixels, which the loss must weigh right."""
    images, labels = [], []
    for seed in range(n):
        image, objects = make_nuclei(seed=seed)
        sparse = np.zeros_like(objects)
        for k, obj in enumerate(range(1, 4)):
            sparse[objects == obj] = 2 + k
        stroke = (slice(5 + 10 * seed, 9 + 10 * seed), slice(5, 60))
        sparse[stroke][objects[stroke] == 0] = 1
        images.append(image)
        labels.append(sparse)
    return images, labels


EQUAL = dict(
    labels_kind="sparse-instances",
    steps=4,
    width=4,
    depth=2,
    patch=32,
    batch_size=4,
    batch_norm=False,
    precision="fp32",
    device="cpu",
    init="scratch",
)


def _train_rank(rank: int, world: int, port: int, out: str) -> None:
    """One process of a data-parallel training, as torchrun would start it."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from napari_unet.config import TrainConfig
    from napari_unet.training import train

    images, labels = sparse_pairs()
    train(images, labels, config=TrainConfig(augment=False), out=out, **EQUAL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_the_model_of_one_process_with_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    from napari_unet.config import TrainConfig
    from napari_unet.training import train

    two = tmp_path / "two"
    mp.spawn(_train_rank, args=(2, free_port(), str(two)), nprocs=2, join=True)
    images, labels = sparse_pairs()
    one = train(images, labels, config=TrainConfig(augment=False), out=tmp_path / "one", **EQUAL)
    parallel = load_model(two)
    assert parallel.history["sessions"][-1]["processes"] == 2
    assert parallel.history["sessions"][-1]["global_batch"] == 4
    assert one.history["sessions"][-1]["processes"] == 1
    assert parallel.history["steps"] == one.history["steps"] == 4
    moved = 0.0
    for (name, a), b in zip(
        one.network.state_dict().items(), parallel.network.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=name)
        moved = max(moved, float(a.abs().max()))
    assert moved > 0


def test_the_loss_divides_by_the_mean_count_over_the_ranks():
    """Two ranks' losses, each divided by the mean count, average (as DDP averages their
    gradients) to the loss of one process on both halves: sparse labels weigh the same."""
    from napari_unet.losses import masked_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 8, 8, generator=gen)
    target = torch.randint(0, 3, (4, 8, 8), generator=gen)
    target[:1, :, 2:] = -1  # the first crop is mostly unlabeled
    halves = [(logits[:1], target[:1]), (logits[1:2], target[1:2])]
    counts = [float((t != -1).sum()) for _, t in halves]
    mean = sum(counts) / 2
    ranks = [masked_cross_entropy(lg, t, count=lambda c: torch.tensor(mean)) for lg, t in halves]
    whole = masked_cross_entropy(logits[:2], target[:2])
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, whole)
    local = [masked_cross_entropy(lg, t) for lg, t in halves]  # what each rank alone gives
    assert abs(float((local[0] + local[1]) / 2 - whole)) > 1e-3


def test_ranks_and_devices_from_torchrun_environment():
    assert ranks_from_env({}) == Ranks()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    ranks = ranks_from_env(env)
    assert (ranks.rank, ranks.world, ranks.local, ranks.local_world) == (3, 4, 1, 2)
    assert ranks.parallel and not ranks.main
    with pytest.raises(ValueError, match="RANK='x'"):
        ranks_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        ranks_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    assert rank_device("cpu", ranks) == "cpu"
    with pytest.raises(ValueError, match="'cuda:1' with 4 processes"):
        rank_device("cuda:1", ranks)
    with pytest.raises(ValueError, match="mps"):
        rank_device("mps", ranks)


def test_launch_refusals_before_anything_starts(monkeypatch):
    with pytest.raises(ValueError, match="already one of 2 started by torchrun"):
        check_launch(2, "cpu", {"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="--device cuda:1: the processes take cuda:0 to cuda:1"):
        check_launch(2, "cuda:1", {})
    with pytest.raises(ValueError, match="mps is one GPU"):
        check_launch(2, "mps", {})
    assert check_launch(3, "cpu", {}) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU; --device cpu trains in 2 CPU processes"):
        check_launch(2, "auto", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="--devices 3: this machine has 2 CUDA GPU"):
        check_launch(3, "cuda", {})
    assert check_launch(2, "cuda", {}) == "cuda"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_nuclei_folders(tmp_path_factory.mktemp("ddp"), 4)


def train_args(folders, out, *extra):
    return ["train", "--images", folders / "images", "--labels", folders / "labels",
            "--labels-kind", "instances", "--out", out, *SMALL_NET, *extra]  # fmt: skip


def test_cli_refuses_what_cannot_be_shared(folders, tmp_path, monkeypatch):
    out = tmp_path / "m"
    r = run_cli(*train_args(folders, out, "--devices", "2", "--device", "cuda:1"))
    assert r.returncode == 2 and "the processes take cuda:0 to cuda:1" in r.stderr
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = run_cli(*train_args(folders, out, "--devices", "2", "--device", "cpu"))
    assert r.returncode == 2 and "leave --devices out under torchrun" in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cli_two_processes_one_folder_one_voice_and_a_shared_time_budget(folders, tmp_path):
    out = tmp_path / "m"
    r = run_cli(*train_args(folders, out, "--devices", "2", "--device", "cpu",
                            "--batch-size", "4", "--time-budget", "8"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("model saved to") == 1
    assert r.stdout.count("training on 4 image(s)") == 1
    assert "batch 4 (2 processes x 2)" in r.stdout
    history = json.loads((out / "training.json").read_text())
    session = history["sessions"][-1]
    assert (session["processes"], session["global_batch"]) == (2, 4)
    assert "finished after" in r.stdout and "(time)" in r.stdout
    # one folder (and its writer lock), nothing beside
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]
    predicted = run_cli("predict", out, folders / "images" / "n0.tif", "--out", tmp_path / "p")
    assert predicted.returncode == 0, predicted.stderr
    assert (tmp_path / "p" / "n0.tif").exists()
    # resumed with one process: the steps add up, each session says how many processes
    steps = history["steps"]
    r = run_cli(*train_args(folders, out, "--resume", "--steps", "3", "--batch-size", "4",
                            "--replace-worse"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    history = json.loads((out / "training.json").read_text())
    assert history["steps"] == steps + 3
    assert [s["processes"] for s in history["sessions"]] == [2, 1]


@pytest.mark.slow
def test_torchrun_resumes_a_one_process_model_in_two_processes(folders, tmp_path):
    out = tmp_path / "m"
    r = run_cli(*train_args(folders, out, "--steps", "3", "--batch-size", "4", "--device", "cpu"))
    assert r.returncode == 0, r.stderr
    # under torchrun, unchanged: the processes are torchrun's
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                "2", "-m", "napari_unet.cli"]  # fmt: skip
    args = train_args(folders, out, "--resume", "--steps", "3", "--batch-size", "4",
                      "--device", "cpu", "--replace-worse")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*torchrun, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("model saved to") == 1
    history = json.loads((out / "training.json").read_text())
    assert history["steps"] == 6
    assert [s["processes"] for s in history["sessions"]] == [1, 2]
    assert history["sessions"][-1]["start_step"] == 3
    r = run_cli(*train_args(folders, tmp_path / "odd", "--steps", "2", "--batch-size", "3",
                            "--devices", "2", "--device", "cpu"))  # fmt: skip
    assert r.returncode == 2
    assert "batch size 3 cannot be shared by 2 processes" in r.stderr
    assert r.stderr.count("cannot be shared") == 1  # said once, by rank 0


def _worker_pid(mark: str, local_rank: int) -> int | None:
    """The pid of the training process of ``local_rank`` started under ``mark``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"DDP_TEST_MARK={mark}".encode() in env and f"LOCAL_RANK={local_rank}".encode() in env:
            return int(proc.name)
    return None


def test_the_failure_named_is_the_cause_not_the_launcher_stopping_the_others():
    from types import SimpleNamespace as Failure

    term, kill = -int(signal.SIGTERM), -int(signal.SIGKILL)
    # rank 0 refused the input (exit 2); the launcher then stopped rank 1 with SIGTERM
    refused = {0: Failure(exitcode=2, timestamp=10.0), 1: Failure(exitcode=term, timestamp=9.0)}
    assert _root_failure(refused)[0] == 0
    # rank 1 was killed (SIGKILL): the others' errors and SIGTERMs follow from it
    killed = {0: Failure(exitcode=1, timestamp=5.0), 1: Failure(exitcode=kill, timestamp=6.0),
              2: Failure(exitcode=term, timestamp=7.0)}  # fmt: skip
    assert _root_failure(killed)[0] == 1
    # only SIGTERMs (e.g. one sent by the user before the handlers were in place): the first
    stopped = {0: Failure(exitcode=term, timestamp=3.0), 1: Failure(exitcode=term, timestamp=2.0)}
    assert _root_failure(stopped)[0] == 1


@pytest.mark.slow
def test_a_killed_process_ends_the_training_and_is_named(folders, tmp_path):
    mark = uuid.uuid4().hex
    env = {**os.environ, "DDP_TEST_MARK": mark}
    args = train_args(folders, tmp_path / "m", "--devices", "2", "--device", "cpu",
                      "--batch-size", "4", "--time-budget", "600")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in proc.stdout:  # wait for training to run
            if line.startswith("step "):
                break
        pid = _worker_pid(mark, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - killed < 60
    assert proc.returncode != 0
    assert "training process 1 of 2" in err and "SIGKILL" in err


@pytest.mark.slow
def test_ctrl_c_stops_every_process_and_rank_0_saves(folders, tmp_path):
    out = tmp_path / "m"
    args = train_args(folders, out, "--devices", "2", "--device", "cpu", "--batch-size", "4",
                      "--time-budget", "600")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: Ctrl+C reaches them all, as in a terminal
        preexec_fn=default_sigint,
    )
    try:
        for line in proc.stdout:
            if line.startswith("step "):
                break
        os.killpg(proc.pid, signal.SIGINT)
        out_text, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.count("stopping after this step") == 1  # rank 0 speaks for both
    assert err.count(f"is in {out}; continue with:") == 1
    history = json.loads((out / "training.json").read_text())
    assert history["sessions"][-1]["stopped"] == "stopped by the user"
    assert history["sessions"][-1]["processes"] == 2
    assert load_model(out).history["steps"] == history["steps"] > 0
