"""Device choice ("auto" = cuda, then mps, then cpu), the devices there are, and how to
describe them.

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


def resolve_device(device: str | torch.device = "auto", make_current: bool = True) -> torch.device:
    """Turn "auto" / "cpu" / "cuda[:i]" / "mps" into a usable torch.device.

    ``cuda:<i>`` is made the current CUDA device (``torch.cuda.set_device``) unless
    ``make_current`` is False, so that what looks at the current device (bf16 support,
    pinned memory, ``empty_cache``, memory statistics) looks at that card; "cuda" and
    "auto" are the current device already.  ``make_current=False`` only checks, e.g. in
    the process that hands the run to a child.  Raises a ValueError naming the device
    when it is not available here.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    parse_device(device)
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
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
        if dev.index is not None and make_current:
            torch.cuda.set_device(dev)
        return dev
    if kind == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} was asked for but MPS is not available here")
    return torch.device(name)


def available_devices() -> list[tuple[str, str]]:
    """The devices of this machine as (value, text) pairs, for a device list.

    "auto" first (its text says what it picks), then "cpu", each visible CUDA device as
    "cuda:<i>" with its name, and "mps" where there is one.  Values are what
    :func:`resolve_device` takes.  Asking for the names starts CUDA in this process but
    makes no device current.
    """
    import torch

    cuda: list[tuple[str, str]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            try:
                cuda.append((f"cuda:{i}", f"cuda:{i}: {torch.cuda.get_device_name(i)}"))
            except (RuntimeError, AssertionError):  # a card that does not answer: no name
                cuda.append((f"cuda:{i}", f"cuda:{i}"))
    mps = [("mps", "mps")] if _mps_available() else []
    if cuda:
        try:
            auto = f"cuda:{torch.cuda.current_device()}"
        except (RuntimeError, AssertionError):
            auto = "cuda"
    else:
        auto = "mps" if mps else "cpu"
    return [("auto", f"auto ({auto})"), ("cpu", "cpu"), *cuda, *mps]


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def describe_device(device: torch.device) -> str:
    """What the user sees, e.g. "cuda:1: NVIDIA H100" or "cpu, 2 threads"."""
    import torch

    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index}: {torch.cuda.get_device_name(index)}"
    if device.type == "cpu":
        return f"cpu, {torch.get_num_threads()} threads"
    return device.type


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device`` (None = stay in float32): bf16 where that
    card supports it, else fp16.

    ``torch.cuda.is_bf16_supported`` has no device argument (it asks the current
    device), so a ``cuda:<i>`` is made current while it asks (``torch.cuda.device``);
    plain "cuda" is the current device.
    """
    import contextlib

    import torch

    if device.type != "cuda":
        return None
    current = contextlib.nullcontext() if device.index is None else torch.cuda.device(device)
    with current:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
