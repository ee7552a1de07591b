"""Device choice ("auto" = cuda, then mps, then cpu) and how to describe it.

torch is imported only by the functions that need it, so :func:`parse_device` can refuse
a misspelt ``--device`` before the command line pays for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # of a training (see recipes.Recipe.autocast)


def parse_device(device: str) -> tuple[str, int | None]:
    """Check the spelling of a device name; return (kind, index or None). No torch needed.

    Raises a ValueError naming the device unless it is auto, cpu, cuda, cuda:<index>,
    mps (any case; an index is allowed on every kind but auto).
    """
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'auto' or 'cpu', got {device!r}")
    kind, colon, index = device.strip().lower().partition(":")
    if kind not in DEVICES or (colon and (kind == "auto" or not index.isdigit())):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:<index> or mps, got {device!r}")
    return kind, int(index) if index else None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" / "cpu" / "cuda[:i]" / "mps" into a usable torch.device.

    Raises a ValueError naming the device when it is not available here.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    parse_device(device)
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.partition(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
            )
        return dev
    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r} was asked for but MPS is not available here")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """What the user sees, e.g. "cuda: NVIDIA H100" or "cpu, 2 threads"."""
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu, {torch.get_num_threads()} threads"
    return device.type


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device`` (None = stay in float32)."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
