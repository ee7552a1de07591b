"""Fuzzing the loaders with hypothesis: the only exception that may escape is ValueError.

Covered: ``ModelSpec.from_dict`` (random JSON values, valid configs with one value
replaced), ``load_model`` on a folder whose ``config.json`` or ``weights.safetensors``
is fuzzed (random bytes, truncated, bit-flipped, header fields replaced; with the
recorded sha256 updated so the damage reaches the parsers), and ``read_image`` on
random bytes saved as .tif/.png/.jpg/.zarr (also behind a valid signature, so the
readers get past their first check).  Every ValueError must name the file.

Kept small (a few hundred examples in all, about 10 s) so it runs with the suite.
"""

from __future__ import annotations

import itertools
import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_unet.config import LabelsConfig, ModelConfig, ModelSpec, TileConfig
from napari_unet.files import read_image
from napari_unet.model import UNet
from napari_unet.store import CONFIG_FILE, WEIGHTS_FILE, Model, load_model, save_model, sha256_hex

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


def _spec() -> ModelSpec:
    return ModelSpec(
        model=ModelConfig(in_channels=1, num_classes=3, depth=2, width=4),
        labels=LabelsConfig(kind="instances"),
        tiling=TileConfig(tile=64),
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    spec = _spec()
    net = UNet.from_config(spec.model).eval()
    return save_model(
        Model(network=net, config=spec, history={"steps": 1}), tmp_path_factory.mktemp("fuzz") / "m"
    )


_counter = itertools.count()


def _fresh_copy(model_dir: Path) -> Path:
    folder = model_dir.parent / f"copy{next(_counter)}"
    shutil.copytree(model_dir, folder)
    return folder


def _rehash(folder: Path) -> None:
    """Record the (damaged) weights' sha256 in config.json, so the damage reaches the parser."""
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["weights_sha256"] = sha256_hex((folder / WEIGHTS_FILE).read_bytes())
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))


def _load_or_value_error(folder: Path) -> None:
    try:
        model = load_model(folder)
    except ValueError as exc:
        assert str(folder) in str(exc), str(exc)
        assert len(str(exc)) < 1000, str(exc)
        return
    assert isinstance(model.config, ModelSpec)


# --------------------------------------------------------------------------- config


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


@FUZZ
@given(json_values)
def test_from_dict_random_values(data: Any) -> None:
    try:
        ModelSpec.from_dict(data)
    except ValueError:
        pass


@FUZZ
@given(st.data())
def test_from_dict_one_value_replaced(data: st.DataObject) -> None:
    valid = _spec().to_dict()
    path = data.draw(st.sampled_from(_paths(valid)[1:]))
    mutated = _replace(valid, path, data.draw(json_values))
    try:
        spec = ModelSpec.from_dict(mutated)
    except ValueError as exc:
        assert len(str(exc)) < 500, str(exc)
        return
    # whatever is accepted is a real, self-consistent config
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@FUZZ
@given(st.data())
def test_config_json_fuzzed(model_dir: Path, data: st.DataObject) -> None:
    folder = _fresh_copy(model_dir)
    path = folder / CONFIG_FILE
    raw = path.read_bytes()
    how = data.draw(st.sampled_from(["random", "truncate", "flip", "replace"]))
    if how == "random":
        raw = data.draw(st.binary(max_size=300))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        raw = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        raw = bytes(raw)
    else:
        cfg = json.loads(raw)
        target = data.draw(st.sampled_from(_paths(cfg)[1:]))
        raw = json.dumps(_replace(cfg, target, data.draw(json_values))).encode()
    path.write_bytes(raw)
    _load_or_value_error(folder)


# --------------------------------------------------------------------------- weights


@FUZZ
@given(st.data())
def test_weights_fuzzed(model_dir: Path, data: st.DataObject) -> None:
    folder = _fresh_copy(model_dir)
    path = folder / WEIGHTS_FILE
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    how = data.draw(
        st.sampled_from(["random", "truncate", "flip", "flip header", "length", "field"])
    )
    if how == "random":
        raw = bytearray(data.draw(st.binary(max_size=200)))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how in ("flip", "flip header"):
        top = 8 + n if how == "flip header" else len(raw)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, top - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "length":
        raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    else:  # one field of one tensor entry replaced by any JSON value
        header = json.loads(raw[8 : 8 + n])
        key = data.draw(st.sampled_from(sorted(header)))
        field = data.draw(st.sampled_from(sorted(header[key]) or ["x"]))
        header[key] = dict(header[key]) if isinstance(header[key], dict) else {}
        header[key][field] = data.draw(json_values)
        text = json.dumps(header).encode()
        raw = bytearray(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    path.write_bytes(bytes(raw))
    if data.draw(st.booleans()):
        _rehash(folder)
    _load_or_value_error(folder)


# --------------------------------------------------------------------------- images

SIGNATURES = {
    ".tif": [b"", b"II*\x00", b"MM\x00*", b"II+\x00\x08\x00\x00\x00"],
    ".png": [b"", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"],
    ".jpg": [b"", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb"],
}
_tmp = tempfile.TemporaryDirectory(prefix="napari-unet-fuzz-")


def _read_or_value_error(path: Path) -> None:
    try:
        arr = read_image(path)
    except ValueError as exc:
        assert str(path) in str(exc), str(exc)
        return
    assert isinstance(arr, np.ndarray) and arr.size > 0


@settings(FUZZ, max_examples=150)
@given(
    suffix=st.sampled_from(sorted(SIGNATURES)),
    signature=st.integers(0, 3),
    body=st.binary(max_size=400),
)
def test_read_image_random_bytes(suffix: str, signature: int, body: bytes) -> None:
    options = SIGNATURES[suffix]
    path = Path(_tmp.name) / f"img{next(_counter)}{suffix}"
    path.write_bytes(options[signature % len(options)] + body)
    _read_or_value_error(path)


@FUZZ
@given(
    name=st.sampled_from(["zarr.json", ".zarray", ".zgroup", ".zattrs", "c/0/0", "0.0"]),
    body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    as_file=st.booleans(),
)
def test_read_image_random_zarr(name: str, body: bytes, as_file: bool) -> None:
    path = Path(_tmp.name) / f"img{next(_counter)}.zarr"
    if as_file:  # a file that only pretends to be a zarr folder
        path.write_bytes(body)
    else:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(body)
    _read_or_value_error(path)
