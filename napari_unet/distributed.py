"""Data-parallel training on torch.distributed: the ranks, the process group, the launcher.

A training is data-parallel when torch's launcher started it: ``torchrun`` (or
``napari-unet train --devices N``, which calls the same launcher, see :func:`launch`) sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in every worker's environment, and
:class:`Group` joins them (NCCL between GPUs, gloo on the CPU).  What the loop asks of
the group (:mod:`napari_unet.training`, :mod:`napari_unet.trainer`):

- the network wrapped in DistributedDataParallel (SyncBatchNorm on CUDA);
- the global batch: every rank draws the same crops from one seeded sampler and trains
  on its share (:meth:`share`);
- the loss divided by the mean count of labeled pixels over the ranks
  (:meth:`mean_count`), so that sparse labels weigh as on one process: DDP averages the
  gradients, and ``sum_r W * s_r / sum_r c_r`` is the one-process loss ``sum s / sum c``;
- one decision per step, rank 0's, broadcast on a CPU group (:meth:`agree`): the stop
  and the schedule's progress, so that the ranks never disagree and none waits forever.

Rank 0 alone validates, previews, checkpoints, calibrates and saves.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from .devices import parse_device

if TYPE_CHECKING:
    import torch

TIMEOUT = timedelta(minutes=30)
"""How long a rank waits for the others in one collective (rank 0 validating or saving
between two steps: seconds; a dead rank is noticed by the launcher long before)."""
SHUTDOWN_SECONDS = 120
"""On Ctrl+C or SIGTERM the launcher passes the signal on and waits this long for the
workers to save (rank 0 saves the model so far) before it kills them."""
LAUNCHED = "NAPARI_UNET_LAUNCHED"
"""The wall-clock time (``time.time()``) ``--devices`` started: the time budget counts
from it in every worker, the launch included."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the processes of one training."""

    rank: int = 0
    world: int = 1
    local: int = 0  # the rank on this node: its GPU
    local_world: int = 1  # processes on this node

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The ranks torchrun set (one process when ``WORLD_SIZE`` is absent or 1)."""
    if "WORLD_SIZE" not in environ:
        return Ranks()
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        text = environ.get(name, "0" if name.startswith("LOCAL") or name == "RANK" else "1")
        if not text.strip().isdigit():
            raise ValueError(f"environment variable {name}={text!r}: not a whole number")
        values[name] = int(text)
    world = values["WORLD_SIZE"]
    local_world = values["LOCAL_WORLD_SIZE"] if "LOCAL_WORLD_SIZE" in environ else world
    if world < 1 or values["RANK"] >= world:
        raise ValueError(f"environment RANK={values['RANK']}, WORLD_SIZE={world}: no such rank")
    return Ranks(values["RANK"], world, values["LOCAL_RANK"], local_world)


def rank_device(device: str, ranks: Ranks) -> str:
    """The device of one rank: ``cuda:LOCAL_RANK`` for ``auto`` / ``cuda`` with GPUs,
    ``cpu`` for ``cpu``; what cannot be shared among processes is refused."""
    import torch

    kind, index = parse_device(device)
    if kind == "cuda" and index is not None:
        raise ValueError(
            f"device {device!r} with {ranks.world} processes: each process trains on the "
            "GPU of its local rank; give --device cuda (or auto)"
        )
    if kind == "mps":
        raise ValueError("device 'mps' trains in one process only (it is one GPU)")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return "cpu"
    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    if ranks.local_world > count:
        raise ValueError(
            f"{ranks.local_world} processes on this node but {count} GPU(s): one process per "
            "GPU (or --device cpu)"
        )
    return f"cuda:{ranks.local}"


class Group:
    """The process group of one data-parallel training and the collectives its loop uses.

    ``Group.join(ranks, device)`` initialises torch.distributed from torchrun's environment
    unless the caller already did; :meth:`close` ends what :meth:`join` started.
    """

    def __init__(self, ranks: Ranks, device: torch.device, owned: bool) -> None:
        import torch.distributed as dist

        self.ranks, self.device, self.owned = ranks, device, owned
        self.dist = dist
        # decisions travel on the CPU: no device synchronisation for them
        nccl = dist.get_backend() == "nccl"
        self.control = dist.new_group(backend="gloo", timeout=TIMEOUT) if nccl else None

    @classmethod
    def join(cls, ranks: Ranks, device: torch.device) -> Group:
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            raise ValueError("this torch build has no torch.distributed: train in one process")
        owned = not dist.is_initialized()
        if owned:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, timeout=TIMEOUT)
        if dist.get_world_size() != ranks.world or dist.get_rank() != ranks.rank:
            raise ValueError(
                f"the process group has {dist.get_world_size()} processes (this is rank "
                f"{dist.get_rank()}), the environment says {ranks.world} (rank {ranks.rank})"
            )
        return cls(ranks, device, owned)

    def close(self, together: bool = True) -> None:
        """Leave the group: ``together`` (the training ended on every rank), all ranks meet,
        then it is destroyed (one rank destroying it while another still talks aborts that
        one); after an error on this rank, at once (the launcher stops the others)."""
        if self.owned and self.dist.is_initialized():
            import gc

            gc.collect()  # the data-parallel wrapper's reducer, before its group
            if together:
                self.dist.barrier(group=self.control)
            self.dist.destroy_process_group()

    # ----------------------------------------------------------------- the loop's needs

    def wrap(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` in DistributedDataParallel (its batch norms synchronised on CUDA);
        the module itself stays the one to validate and save."""
        import torch
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
            return DistributedDataParallel(network, device_ids=[self.device.index])
        return DistributedDataParallel(network)

    def share(self, batch_size: int) -> slice:
        """This rank's part of a global batch of ``batch_size`` crops."""
        n = batch_size // self.ranks.world
        return slice(self.ranks.rank * n, (self.ranks.rank + 1) * n)

    def mean_count(self, count: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of a count (of labeled pixels): the loss's divisor."""
        total = count.detach().clone().float()
        self.dist.all_reduce(total)
        return total / self.ranks.world

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks (the loss to report)."""
        return self.mean_count(value)

    def agree(self, values: Sequence[float]) -> list[float]:
        """Rank 0's ``values``, on every rank (one broadcast on a CPU group)."""
        import torch

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        self.dist.broadcast(tensor, src=0, group=self.control)
        return tensor.tolist()


# --------------------------------------------------------------------------- the launcher


def check_launch(devices: int, device: str, environ: Mapping[str, str] = os.environ) -> str:
    """Refuse a ``--devices N`` that cannot start, before anything starts; return what
    the workers train on ("cpu" or "cuda")."""
    if devices < 1:
        raise ValueError(f"--devices {devices}: give the number of processes, 1 or more")
    if "WORLD_SIZE" in environ:
        raise ValueError(
            f"--devices {devices} starts its own processes, but this one is already one of "
            f"{environ['WORLD_SIZE']} started by torchrun: leave --devices out under torchrun"
        )
    kind, index = parse_device(device)
    if kind == "cuda" and index is not None:
        raise ValueError(
            f"--devices {devices} with --device {device}: the processes take cuda:0 to "
            f"cuda:{devices - 1}; give --device cuda, or CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    if kind == "mps":
        raise ValueError(f"--devices {devices} with --device mps: mps is one GPU")
    if kind == "cpu":
        return "cpu"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(
            f"--devices {devices} with --device {device}: this machine has no CUDA GPU; "
            f"--device cpu trains in {devices} CPU processes"
        )
    if devices > count:
        raise ValueError(f"--devices {devices}: this machine has {count} CUDA GPU(s)")
    return "cuda"


def launch(argv: Sequence[str], devices: int, kind: str) -> int:
    """Run ``python -m napari_unet.cli *argv`` in ``devices`` local processes with torch's
    own launcher (torchrun's ``--standalone``: a rendezvous on a free port); the exit
    status, with one line naming the process that failed when one was killed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault(LAUNCHED, repr(time.time()))
    if kind == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # share the cores
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // devices))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=devices,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        shutdown_timeout=SHUTDOWN_SECONDS,
    )
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "napari_unet.cli", *argv)
    except SignalException as exc:  # Ctrl+C, SIGTERM: passed on to the workers, who save
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = _root_failure(exc.failures)
        if failure.exitcode > 0:  # the process said why, and its status says what kind
            return failure.exitcode
        print(
            f"napari-unet train: error: training process {rank} of {devices} (pid "
            f"{failure.pid}) was killed by {failure.signal_name()}; the others were stopped",
            file=sys.stderr,
        )
        return 1
    return 0


def _root_failure(failures: Mapping[int, object]) -> tuple[int, object]:
    """The failure that ended the job: a process killed by a signal (other than the
    SIGTERM with which the launcher stops the others once one has failed), else one that
    exited with a status (it said why), else the first."""
    codes = {r: f.exitcode for r, f in failures.items()}  # type: ignore[attr-defined]
    killed = [r for r, c in codes.items() if c < 0 and -c != signal.SIGTERM]
    exited = [r for r, c in codes.items() if c > 0]
    pool = killed or exited or list(failures)
    rank = min(pool, key=lambda r: failures[r].timestamp)  # type: ignore[attr-defined]
    return rank, failures[rank]


def launched_at(clock_now: float, environ: Mapping[str, str] = os.environ) -> float | None:
    """The value of a ``time.perf_counter``-like clock (read as ``clock_now`` now) when
    ``--devices`` started the job, or None outside it."""
    text = environ.get(LAUNCHED)
    if not text:
        return None
    try:
        started = float(text)
    except ValueError:
        return None
    return clock_now - max(0.0, time.time() - started)
