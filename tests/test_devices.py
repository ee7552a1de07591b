"""Device names: misspelt ones are refused without torch, absent ones with a clear message."""

import subprocess
import sys

import pytest
import torch

from napari_unet.devices import parse_device, resolve_device


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
