"""Tests for the model folder format (napari_unet.store)."""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_unet import safety, store
from napari_unet.checkpoint import load_checkpoint, save_checkpoint
from napari_unet.config import LabelsConfig, ModelConfig, ModelSpec
from napari_unet.model import UNet
from napari_unet.store import (
    Model,
    ModelFormatError,
    atomic_write_bytes,
    atomic_write_json,
    content_hash,
    load_model,
    save_model,
)


def _spec(width: int = 4) -> ModelSpec:
    return ModelSpec(
        model=ModelConfig(in_channels=1, num_classes=3, depth=2, width=width),
        labels=LabelsConfig(kind="instances"),
    )


def _model(width: int = 4, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    spec = _spec(width)
    net = UNet.from_config(spec.model)
    # Non-trivial BatchNorm statistics, so buffers are checked too.
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 16, 16))
    history = {"steps": 3, "losses": [1.0, 0.5, 0.25], "images": [{"hash": "ab"}]}
    return Model(network=net, config=spec, history=history)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Model, Path]:
    model = _model()
    folder = save_model(model, tmp_path / "m")
    return model, folder


def _rehash(folder: Path) -> None:
    """Make config.json's weights hash match the current weights file."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["weights_sha256"] = store.sha256_hex((folder / "weights.safetensors").read_bytes())
    (folder / "config.json").write_text(json.dumps(cfg))


def _expect_error(folder: Path, filename: str, *fragments: str) -> ModelFormatError:
    with pytest.raises(ModelFormatError) as info:
        load_model(folder)
    message = str(info.value)
    assert filename in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


class _Marker:
    """Unpickling this would create a marker file (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


# --------------------------------------------------------------------------- round trips


def test_round_trip_state_and_outputs(saved: tuple[Model, Path]) -> None:
    model, folder = saved
    assert model.path == folder
    loaded = load_model(folder)
    original = model.network.state_dict()
    restored = loaded.network.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key
    assert not loaded.network.training
    assert loaded.device == torch.device("cpu")
    x = torch.randn(1, 1, 16, 16)
    model.network.eval()
    with torch.no_grad():
        assert torch.equal(model.network(x), loaded.network(x))
    assert loaded.config == model.config
    assert loaded.history == model.history
    assert loaded.path == folder


def test_saved_files_and_metadata(saved: tuple[Model, Path]) -> None:
    _, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "training.json",
        "weights.safetensors",
    ]
    cfg = json.loads((folder / "config.json").read_text())
    digest = cfg.pop("weights_sha256")
    assert digest == store.sha256_hex((folder / "weights.safetensors").read_bytes())
    assert ModelSpec.from_dict(cfg) == _spec()
    from safetensors import safe_open

    with safe_open(str(folder / "weights.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "napari-unet"}
        for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
            tensor = handle.get_tensor(key)
            assert tensor.dtype in (torch.float32, torch.int64), key


def test_config_round_trip_non_default(tmp_path: Path) -> None:
    spec = ModelSpec(
        model=ModelConfig(
            spatial_dims=2,
            in_channels=2,
            num_classes=2,
            depth=1,
            width=2,
            padding="valid",
            batch_norm=False,
        ),
        labels=LabelsConfig(kind="semantic", class_names=("membrane", "cell"), value_map=(0, 255)),
    )
    net = UNet.from_config(spec.model)
    folder = save_model(Model(net, spec, {}), tmp_path / "a" / "b")
    loaded = load_model(folder)
    assert loaded.config == spec
    assert loaded.history == {}


def test_save_keeps_user_files_and_overwrites(saved: tuple[Model, Path]) -> None:
    _, folder = saved
    (folder / "notes.txt").write_text("mine")
    other = _model(seed=1)
    save_model(other, folder)
    assert (folder / "notes.txt").read_text() == "mine"
    loaded = load_model(folder)
    for key, value in other.network.state_dict().items():
        assert torch.equal(value, loaded.network.state_dict()[key])


def test_save_refuses_file_path(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(ValueError, match="afile"):
        save_model(_model(), target)


def test_missing_history_is_empty(saved: tuple[Model, Path]) -> None:
    _, folder = saved
    (folder / "training.json").unlink()
    assert load_model(folder).history == {}


def test_auto_device(saved: tuple[Model, Path]) -> None:
    _, folder = saved
    model = load_model(folder, device="auto")
    assert model.device.type in ("cpu", "cuda", "mps")


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"1")
    atomic_write_bytes(tmp_path / "a.bin", b"22")
    atomic_write_json(tmp_path / "b.json", {"x": (1, 2)})
    assert (tmp_path / "a.bin").read_bytes() == b"22"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]
    save_model(_model(), tmp_path / "m")
    names = [p.name for p in (tmp_path / "m").iterdir()]
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "c.json"
    atomic_write_json(target, {"old": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


# --------------------------------------------------------------------------- content hash


def test_content_hash() -> None:
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    h = content_hash(a)
    assert len(h) == 64 and h == content_hash(a.copy())
    assert h != content_hash(a.astype(np.int32))
    assert h != content_hash(a.reshape(4, 3))
    b = a.copy()
    b[0, 0] = 1
    assert h != content_hash(b)
    t = np.asfortranarray(a)
    assert content_hash(t) == h
    assert content_hash(a.T) == content_hash(np.ascontiguousarray(a.T))


# --------------------------------------------------------------------------- load errors


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="nope"):
        load_model(tmp_path / "nope")


Corrupt = Callable[[Path], None]
WEIGHTS = "weights.safetensors"


def _write(name: str, data: bytes, rehash: bool = False) -> Corrupt:
    """Replace (or add) the file ``name``; with ``rehash``, config.json records the new hash."""

    def corrupt(folder: Path) -> None:
        (folder / name).write_bytes(data)
        if rehash:
            _rehash(folder)

    return corrupt


def _edit_bytes(name: str, change: Callable[[bytes], bytes], rehash: bool = False) -> Corrupt:
    def corrupt(folder: Path) -> None:
        _write(name, change((folder / name).read_bytes()), rehash)(folder)

    return corrupt


def _delete(name: str) -> Corrupt:
    return lambda folder: (folder / name).unlink()


def _edit_config(change: Callable[[dict[str, Any]], Any]) -> Corrupt:
    def corrupt(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        change(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))

    return corrupt


def _edit_tensors(change: Callable[[dict[str, torch.Tensor]], None]) -> Corrupt:
    """Change the saved tensors, save them as valid safetensors and record the new hash."""

    def corrupt(folder: Path) -> None:
        tensors = load_file(str(folder / WEIGHTS))
        change(tensors)
        save_file(tensors, str(folder / WEIGHTS))
        _rehash(folder)

    return corrupt


def _other_network(width: int = 4, seed: int = 0, rehash: bool = True) -> Corrupt:
    """Save the weights of another network (without ``rehash``: a valid file, wrong hash)."""

    def corrupt(folder: Path) -> None:
        save_file(store._weights_tensors(_model(width, seed).network), str(folder / WEIGHTS))
        if rehash:
            _rehash(folder)

    return corrupt


def _edit_header(change: Callable[[dict[str, Any]], None]) -> Corrupt:
    """Change the weights' JSON header, keep the tensor data, record the new hash."""

    def corrupt(folder: Path) -> None:
        path = folder / WEIGHTS
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        change(header)
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
        _rehash(folder)

    return corrupt


def _rename_head(tensors: dict[str, torch.Tensor]) -> None:
    tensors["extra.weight"] = tensors.pop("head.weight")


def _integer_head(tensors: dict[str, torch.Tensor]) -> None:
    tensors["head.weight"] = tensors["head.weight"].to(torch.int32)


def _nan_bias(tensors: dict[str, torch.Tensor]) -> None:
    tensors["head.bias"][0] = float("nan")


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "notes.fifo")  # opening it for reading would block forever


def _broken_link(folder: Path) -> None:
    (folder / "gone.json").symlink_to(folder / "nothing-here")


def _link_loop(folder: Path) -> None:
    (folder / "loop").symlink_to(folder / "loop")


_XX9 = json.dumps({"w": {"dtype": "XX9", "shape": [1], "data_offsets": [0, 4]}}).encode()

# (damage, file the message names, fragments it holds); one row per way a folder breaks
DAMAGES = [
    pytest.param(_delete("config.json"), "config.json", ["missing"], id="config-missing"),
    pytest.param(
        _write("config.json", b"{not json"), "config.json", ["not valid JSON"], id="config-not-json"
    ),
    pytest.param(
        _write("config.json", b" " * (safety.MAX_CONFIG_BYTES + 1) + b"{}"),
        "config.json",
        ["too large"],
        id="config-too-large",
    ),
    pytest.param(
        _edit_config(lambda cfg: cfg.update(version=99)),
        "config.json",
        ["unknown config version 99"],
        id="config-unknown-version",
    ),
    pytest.param(
        _edit_config(lambda cfg: cfg["model"].update(depth=0)),
        "config.json",
        ["depth"],
        id="config-bad-value",
    ),
    pytest.param(
        _edit_config(lambda cfg: cfg.pop("weights_sha256")),
        "config.json",
        ["weights_sha256"],
        id="config-without-hash",
    ),
    pytest.param(_delete(WEIGHTS), WEIGHTS, ["missing"], id="weights-missing"),
    pytest.param(
        _edit_bytes(WEIGHTS, lambda data: data[: len(data) // 2]),
        WEIGHTS,
        ["truncated"],
        id="weights-truncated-half",
    ),
    pytest.param(
        _edit_bytes(WEIGHTS, lambda data: data[:5]),
        WEIGHTS,
        ["truncated"],
        id="weights-truncated-5-bytes",
    ),
    pytest.param(
        _write(WEIGHTS, struct.pack("<Q", 4) + b"nope" + b"\0" * 16),
        WEIGHTS,
        ["invalid safetensors header"],
        id="header-garbage",
    ),
    pytest.param(
        _write(WEIGHTS, struct.pack("<Q", len(_XX9)) + _XX9 + b"\0" * 4, rehash=True),
        WEIGHTS,
        ["'w'", "unknown dtype 'XX9'"],
        id="header-unknown-dtype",
    ),
    pytest.param(
        _write(WEIGHTS, struct.pack("<Q", 2**40) + b"{}"),
        WEIGHTS,
        ["header claims"],
        id="header-too-large",
    ),
    pytest.param(  # 3 floats of data declared as 2
        _edit_header(lambda header: header["head.bias"].update(shape=[2])),
        WEIGHTS,
        ["'head.bias'", "needs 8 bytes"],
        id="header-entry-size",
    ),
    pytest.param(
        _edit_header(lambda header: header["head.bias"].update(shape=[-3])),
        WEIGHTS,
        ["'head.bias'", "invalid shape [-3]"],
        id="header-negative-shape",
    ),
    pytest.param(
        # every entry passes napari-unet's own checks, but 4 stray bytes follow the last
        # tensor: safetensors itself refuses the buffer, and the error is reported cleanly
        _edit_bytes(WEIGHTS, lambda data: data + b"\0" * 4, rehash=True),
        WEIGHTS,
        ["invalid safetensors file"],
        id="safetensors-library-error",
    ),
    pytest.param(
        _other_network(width=8),
        WEIGHTS,
        ["down.0.0.weight", "(8, 1, 3, 3)", "(4, 1, 3, 3)"],
        id="weights-wrong-shapes",
    ),
    pytest.param(
        _edit_tensors(_rename_head),
        WEIGHTS,
        ["missing keys: head.weight", "unexpected keys: extra.weight"],
        id="weights-missing-and-unexpected-keys",
    ),
    pytest.param(_edit_tensors(_integer_head), WEIGHTS, ["head.weight", "I32"], id="weights-int"),
    pytest.param(_edit_tensors(_nan_bias), WEIGHTS, ["head.bias", "NaN"], id="weights-nan"),
    pytest.param(
        _other_network(seed=1, rehash=False),
        WEIGHTS,
        ["weights do not match config (interrupted save?)"],
        id="weights-hash-mismatch",
    ),
    pytest.param(  # depth 6, width 512, 3D: ~93 billion parameters (370 GB) if ever allocated
        _edit_config(lambda cfg: cfg["model"].update(spatial_dims=3, depth=6, width=512)),
        WEIGHTS,
        ["do not fit", "missing keys: down.3.0.weight"],
        id="hostile-architecture-never-built",
    ),
    pytest.param(
        _write("training.json", b"[1, 2]"), "training.json", ["JSON object"], id="history-list"
    ),
    pytest.param(
        _write("model.pth", b"PK\x03\x04" + b"\0" * 64), "model.pth", ["pickle"], id="torch-zip"
    ),
    pytest.param(_fifo, "notes.fifo", ["not a regular file"], id="fifo-never-blocks"),
    pytest.param(_broken_link, "gone.json", ["broken symbolic link"], id="broken-link"),
    pytest.param(_link_loop, "loop", ["symbolic link"], id="link-loop"),
]


@pytest.mark.parametrize(("damage", "filename", "fragments"), DAMAGES)
def test_damaged_folder_is_refused(
    saved: tuple[Model, Path], damage: Corrupt, filename: str, fragments: list[str]
) -> None:
    _, folder = saved
    damage(folder)
    err = _expect_error(folder, filename, *fragments)
    # load_model runs check_model_folder's sequence first: what that finds, it reports
    try:
        safety.check_model_folder(folder)
    except ModelFormatError as first:
        assert str(first) == str(err)


# --------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("relative", ["weights.safetensors", "checkpoint/optimizer.pt"])
@pytest.mark.parametrize("protocol", [2, 5])
def test_pickle_refused(
    saved: tuple[Model, Path], tmp_path: Path, relative: str, protocol: int
) -> None:
    _, folder = saved
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Marker(marker), protocol=protocol)
    target = folder / relative
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(payload)
    with pytest.raises(ModelFormatError, match="pickle") as info:
        load_model(folder)
    assert Path(relative).name in str(info.value)
    assert "never loads pickles" in str(info.value)
    if relative.startswith("checkpoint"):
        with pytest.raises(ModelFormatError, match="pickle"):
            load_checkpoint(folder)
    assert not marker.exists()


def test_pickle_file_given_as_model_path(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    target = tmp_path / "model.pt"
    target.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(ModelFormatError, match="never loads pickles"):
        load_model(target)
    assert not marker.exists()


def test_pickle_like_safetensors_length_is_not_pickle() -> None:
    # A real safetensors header of 0x0280 bytes starts with b"\x80\x02" too.
    head = struct.pack("<Q", 0x0280) + b"{"
    assert not safety._looks_like_pickle(head, 8 + 0x0280 + 16)
    assert safety._looks_like_pickle(head, 100)
    assert safety._looks_like_pickle(pickle.dumps([1, 2, 3], protocol=4)[:9], 1000)
    assert not safety._looks_like_pickle(b'{"a": 1}', 8)


# --------------------------------------------------------------------------- checkpoints


def _make_optimizer(kind: str, net: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-3)
    return torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99)


def _step(net: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 8, 8, generator=gen)
    target = torch.randint(0, 3, (2, 8, 8), generator=gen)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), target).backward()
    opt.step()


def _tiny_net(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(spatial_dims=2, in_channels=1, num_classes=3, depth=1, width=2, batch_norm=False)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_checkpoint_round_trip_and_resume(tmp_path: Path, kind: str) -> None:
    net = _tiny_net()
    opt = _make_optimizer(kind, net)
    for seed in range(2):
        _step(net, opt, seed)
    saved_params = {k: v.clone() for k, v in net.state_dict().items()}
    user_state = {
        "step": 2,
        "elapsed": 1.5,
        "scaler": {"scale": 65536.0, "_growth_tracker": 0},
        "rng": torch.get_rng_state(),
        "history": [1.0, None, "x"],
    }
    save_checkpoint(tmp_path / "m", opt.state_dict(), user_state)
    assert sorted(p.name for p in (tmp_path / "m" / "checkpoint").iterdir()) == [
        "optimizer.safetensors",
        "state.json",
    ]

    loaded = load_checkpoint(tmp_path / "m")
    assert loaded is not None
    opt_state, state = loaded
    assert state["step"] == 2 and state["elapsed"] == 1.5 and state["scaler"]["scale"] == 65536.0
    assert state["history"] == [1.0, None, "x"]
    assert torch.equal(state["rng"], user_state["rng"])
    original = opt.state_dict()
    assert set(opt_state["state"]) == set(original["state"])
    for pid, entry in original["state"].items():
        assert set(opt_state["state"][pid]) == set(entry)
        for name, value in entry.items():
            got = opt_state["state"][pid][name]
            if isinstance(value, torch.Tensor):
                assert isinstance(got, torch.Tensor)
                assert got.dtype == value.dtype and torch.equal(got, value), (pid, name)
            else:
                assert got == value
    assert opt_state["param_groups"][0]["params"] == original["param_groups"][0]["params"]

    # Continue uninterrupted ...
    _step(net, opt, 99)
    expected = net.state_dict()
    # ... and resumed from the checkpoint.
    net2 = _tiny_net(seed=5)
    net2.load_state_dict(saved_params)
    opt2 = _make_optimizer(kind, net2)
    opt2.load_state_dict(opt_state)
    _step(net2, opt2, 99)
    for key, value in expected.items():
        assert torch.equal(value, net2.state_dict()[key]), key


def test_checkpoint_absent_and_incomplete(saved: tuple[Model, Path]) -> None:
    _, folder = saved
    assert load_checkpoint(folder) is None
    save_checkpoint(folder, {"state": {}, "param_groups": []}, {"step": 0})
    assert load_checkpoint(folder) == ({"state": {}, "param_groups": []}, {"step": 0})
    (folder / "checkpoint" / "state.json").unlink()
    assert load_checkpoint(folder) is None
    # A checkpoint never stops the model from loading.
    load_model(folder)


def test_checkpoint_hash_mismatch(tmp_path: Path) -> None:
    net = _tiny_net()
    opt = _make_optimizer("adamw", net)
    _step(net, opt, 0)
    save_checkpoint(tmp_path / "m", opt.state_dict(), {"step": 1})
    path = tmp_path / "m" / "checkpoint" / "optimizer.safetensors"
    _step(net, opt, 1)
    save_file({k: v.contiguous() for k, v in store._weights_tensors(net).items()}, str(path))
    with pytest.raises(ModelFormatError, match=r"optimizer\.safetensors"):
        load_checkpoint(tmp_path / "m")


def test_checkpoint_refuses_unstorable_values(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(tmp_path / "m", {"state": {}, "param_groups": []}, {"x": object()})
    assert not os.path.exists(tmp_path / "m" / "checkpoint" / "state.json")


# --------------------------------------------------------------------------- folder security


def test_symlink_leading_outside_is_refused(saved: tuple[Model, Path], tmp_path: Path) -> None:
    _, folder = saved
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes((folder / "training.json").read_bytes())
    (folder / "training.json").unlink()
    (folder / "training.json").symlink_to(outside)
    _expect_error(folder, "training.json", "symbolic link to", "outside the model folder")
    # a link that stays inside the folder is fine
    (folder / "training.json").unlink()
    (folder / "history-copy.json").write_bytes(outside.read_bytes())
    (folder / "training.json").symlink_to("history-copy.json")
    load_model(folder)


def test_checkpoint_link_leading_outside(saved: tuple[Model, Path], tmp_path: Path) -> None:
    _, folder = saved
    victim = tmp_path / "victim"
    victim.mkdir()
    (folder / "checkpoint").symlink_to(victim)
    _expect_error(folder, "checkpoint", "outside the model folder")
    with pytest.raises(ModelFormatError, match="outside the model folder"):
        load_checkpoint(folder)
    # saving never writes through the link
    with pytest.raises(ValueError, match="outside the model folder"):
        save_checkpoint(folder, {"state": {}, "param_groups": []}, {"step": 0})
    assert list(victim.iterdir()) == []


@pytest.mark.parametrize("name", ["model.pt", "optimizer.pth", "state.pkl", "last.ckpt"])
def test_pickle_suffixes_refused_by_name(saved: tuple[Model, Path], name: str) -> None:
    _, folder = saved
    # protocol 0 pickles start with plain text, so the name is what gives them away
    (folder / name).write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    _expect_error(folder, name, "pickle file by its name", "never loads pickles")


def test_config_json_strictness(saved: tuple[Model, Path]) -> None:
    _, folder = saved
    path = folder / "config.json"
    good = path.read_text()
    cfg = json.loads(good)
    path.write_text(good.rstrip()[:-1] + ', "format": "napari-unet-model"}')
    _expect_error(folder, "config.json", "repeats the key 'format'")
    path.write_text('{"model": ' * 10 + "1" + "}" * 10)
    _expect_error(folder, "config.json", "nested more than")
    path.write_text('{"version": ' + "9" * 5000 + "}")
    _expect_error(folder, "config.json", "not valid JSON")
    for section, key, value, fragment in [
        ("model", "width", True, "width must be an integer, got True"),
        ("model", "depth", 2.0, "depth must be an integer, got 2.0"),
        ("model", "width", [[1]] * 100, "width must be an integer, got ([1], [1], "),
        ("model", "padding", ["same"], "padding must be one of same, valid"),
        ("train", "augment", "yes", "augment must be true or false, got 'yes'"),
        ("train", "augment_invert", 1.5, "augment_invert must be in [0.0, 1.0], got 1.5"),
        ("train", "augment_blur", "2", "augment_blur must be a number, got '2'"),
        ("train", "touch_border", 0.5, "touch_border must be in [0.0, 0.25], got 0.5"),
        ("train", "seed", 2**64, "seed must be in [0, 4294967295]"),
        ("train", "steps", 10**12, "steps must be in [1, 1000000000]"),
        ("tiling", "overlap", float("nan"), "tiling.overlap must be in"),
        ("labels", "class_names", ["a", "b" * 500, "c"], "class names must have 1 to 200"),
    ]:
        bad = json.loads(good)
        bad[section][key] = value
        path.write_text(json.dumps(bad))
        err = _expect_error(folder, "config.json", fragment)
        assert len(str(err)) < 300, str(err)
    bad = dict(cfg, version=True)
    path.write_text(json.dumps(bad))
    _expect_error(folder, "config.json", "unknown config version True")
    bad = dict(cfg, weights_sha256="z" * 64)
    path.write_text(json.dumps(bad))
    _expect_error(folder, "config.json", "weights_sha256")


def test_semantic_value_map_checked() -> None:
    with pytest.raises(ValueError, match="must not repeat"):
        LabelsConfig(kind="semantic", class_names=("a", "b"), value_map=(3, 3))
    with pytest.raises(ValueError, match="fit in 64 bits"):
        LabelsConfig(kind="semantic", class_names=("a", "b"), value_map=(0, 2**70))


@pytest.mark.parametrize(
    ("history", "fragment"),
    [
        ({"steps": "many"}, "'steps' must be int, got 'many'"),
        ({"steps": -4}, "'steps' must be >= 0"),
        ({"elapsed": float("inf")}, "'elapsed' must be >= 0 and finite"),
        ({"sessions": {}}, "'sessions' must be list"),
        ({"sessions": [1]}, "sessions[0] must be a JSON object"),
        (
            {
                "log": [[]] * 3,
                "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
            },
            "nested",
        ),
    ],
)
def test_history_types(saved: tuple[Model, Path], history: dict, fragment: str) -> None:
    _, folder = saved
    atomic_write_json(folder / "training.json", history)
    _expect_error(folder, "training.json", fragment)


def test_checkpoint_param_groups_checked(tmp_path: Path) -> None:
    net = _tiny_net()
    opt = _make_optimizer("adamw", net)
    _step(net, opt, 0)
    save_checkpoint(tmp_path / "m", opt.state_dict(), {"step": 1})
    path = tmp_path / "m" / "checkpoint" / "state.json"
    record = json.loads(path.read_text())
    record["optimizer"]["param_groups"][0]["lr"] = "fast"
    path.write_text(json.dumps(record))
    with pytest.raises(ModelFormatError, match=r"state\.json: param_groups\[0\]\.lr .* 'fast'"):
        load_checkpoint(tmp_path / "m")


@pytest.mark.parametrize("name", ["..", ".", "../evil", "a/b", "/abs", "C:evil", "a\\b", "", "x\0"])
def test_model_names_that_escape_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        store.model_folder(tmp_path, name)


def test_model_folder_plain_name_and_escaping_link(tmp_path: Path) -> None:
    assert store.model_folder(tmp_path, "nuclei v2") == tmp_path / "nuclei v2"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside"):
        store.model_folder(tmp_path / "models", "out")


def test_read_config_reads_no_weights(saved: tuple[Model, Path]) -> None:
    model, folder = saved
    (folder / "weights.safetensors").write_bytes(b"not read at all")
    assert store.read_config(folder) == model.config


def test_check_model_folder_without_torch(saved: tuple[Model, Path]) -> None:
    model, folder = saved
    assert safety.check_model_folder(folder) == model.config
    path = folder / "weights.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(ModelFormatError, match="weights.safetensors: safetensors header claims"):
        safety.check_model_folder(folder)


def test_folder_given_by_mistake_is_not_walked(
    saved: tuple[Model, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    with pytest.raises(ModelFormatError, match="config is missing"):
        load_model(home)
    _, folder = saved
    for i in range(5):
        (folder / f"note{i}.txt").write_text("x")
    monkeypatch.setattr(safety, "MAX_FOLDER_ENTRIES", 6)
    _expect_error(folder, str(folder), "more than 6 files and folders")
