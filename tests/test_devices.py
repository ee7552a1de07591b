"""Device names: misspelt ones are refused without torch, absent ones with a clear message."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from napari_unet.devices import (
    autocast_dtype,
    available_devices,
    describe_device,
    parse_device,
    resolve_device,
)


@pytest.mark.parametrize("name", ["nonsense", "cpu:x", "cuda:-1", "cuda:", "auto:0", "", "meta"])
def test_misspelt_devices_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"device must be auto, cpu, cuda.*got {name!r}"):
        resolve_device(name)


def test_parse_device() -> None:
    assert parse_device(" CUDA:1 ") == ("cuda", 1)
    assert parse_device("cpu") == ("cpu", None)
    assert resolve_device("CPU") == torch.device("cpu")


def test_parse_device_needs_no_torch() -> None:
    code = (
        "import sys, napari_unet.devices as d; d.parse_device('cpu'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="a machine with 8 GPUs has cuda:7")
def test_absent_cuda_device() -> None:
    with pytest.raises(ValueError, match="'cuda:7'"):
        resolve_device("cuda:7")


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two cards (card 1 the one with bf16).

    Returns ``made_current`` (what ``set_device`` got, in order) and ``current`` (the
    current card, ``current[0]``).
    """
    made_current: list = []
    current = [0]

    class CardContext:  # torch.cuda.device: the card is current inside the with block
        def __init__(self, device):
            self.idx = device if isinstance(device, int) else torch.device(device).index

        def __enter__(self):
            self.prev, current[0] = current[0], self.idx

        def __exit__(self, *exc):
            current[0] = self.prev

    def set_device(device):
        made_current.append(device)
        current[0] = device if isinstance(device, int) else torch.device(device).index

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"Fake GPU {i}")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "device", CardContext)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: current[0] == 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return SimpleNamespace(made_current=made_current, current=current)


def test_available_devices_lists_each_card(two_gpus) -> None:
    assert available_devices() == [
        ("auto", "auto (cuda:0)"),
        ("cpu", "cpu"),
        ("cuda:0", "cuda:0: Fake GPU 0"),
        ("cuda:1", "cuda:1: Fake GPU 1"),
    ]
    assert two_gpus.made_current == []  # listing makes no card current


def test_available_devices_here_all_resolve() -> None:
    listed = available_devices()
    values = [value for value, _ in listed]
    assert values[:2] == ["auto", "cpu"]
    assert listed[0][1].startswith(f"auto ({resolve_device('auto').type}")  # what it picks
    assert len([v for v in values if v.startswith("cuda:")]) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    for value in values:
        resolve_device(value, make_current=False)  # every one listed is usable here


def test_an_indexed_card_is_made_current(two_gpus) -> None:
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert [torch.device(d) for d in two_gpus.made_current] == [torch.device("cuda", 1)]
    assert two_gpus.current == [1]
    assert resolve_device("cuda") == torch.device("cuda")  # the current card: nothing to set
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("CUDA:0", make_current=False) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="'cuda:2' does not exist: 2 CUDA"):
        resolve_device("cuda:2")
    assert len(two_gpus.made_current) == 1


def test_checking_a_request_makes_no_card_current(two_gpus) -> None:
    from napari_unet.request import check_device

    check_device("cuda:1", "--device cuda:1")
    with pytest.raises(ValueError, match="--device cuda:3: device 'cuda:3' does not exist"):
        check_device("cuda:3", "--device cuda:3")
    assert two_gpus.made_current == []


def test_autocast_dtype_asks_the_given_card(two_gpus) -> None:
    assert autocast_dtype(torch.device("cuda", 1)) == torch.bfloat16
    assert autocast_dtype(torch.device("cuda", 0)) == torch.float16
    assert two_gpus.current == [0]  # card 1 was current only while asking
    assert autocast_dtype(torch.device("cuda")) == torch.float16  # the current card, 0
    resolve_device("cuda:1")
    assert autocast_dtype(torch.device("cuda")) == torch.bfloat16
    assert autocast_dtype(torch.device("cpu")) is None


def test_describe_device_names_the_card(two_gpus) -> None:
    assert describe_device(torch.device("cuda", 1)) == "cuda:1: Fake GPU 1"
    assert describe_device(torch.device("cuda")) == "cuda:0: Fake GPU 0"
