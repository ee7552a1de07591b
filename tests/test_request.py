"""TrainRequest: one description of a training, one set of checks before any work, each
message naming the value where the user gave it (API keyword, CLI flag, widget field)."""

from __future__ import annotations

import dataclasses

import pytest

from napari_unet.builtin import ReadOnlyModelError
from napari_unet.child import decode, encode
from napari_unet.config import DEFAULT_TIME_BUDGET, TrainConfig
from napari_unet.inputs import Names
from napari_unet.request import TrainRequest


def test_keywords_override_the_config_and_the_default_budget_is_set():
    request = TrainRequest.from_keywords(
        TrainConfig(steps=10, lr=0.01), steps=None, batch_size=3, width=8, out="m"
    )
    assert request.config.steps == 10 and request.config.batch_size == 3
    assert request.config.lr == 0.01 and request.width == 8
    assert request.architecture["width"] == 8 and request.architecture["depth"] is None
    assert TrainRequest().config.time_budget == DEFAULT_TIME_BUDGET
    with pytest.raises(TypeError, match="wdith"):
        TrainRequest.from_keywords(wdith=8)


@pytest.mark.parametrize(
    ("where", "init_text", "resume_text", "choice"),
    [
        ("api", "init='builtin:nuclei'", "resume=True", "give one of them"),
        ("cli", "--init builtin:nuclei", "--resume", "give one of them"),
        ("widget", "'start from builtin:nuclei'", "'continue training'", "untick one of them"),
    ],
)
def test_start_model_with_resume_is_refused_naming_both_places(
    tmp_path, tiny_model, where, init_text, resume_text, choice
):
    _, folder = tiny_model
    request = TrainRequest(out=folder, resume=True, init="builtin:nuclei", where=where)
    with pytest.raises(ValueError) as info:
        request.check()
    message = str(info.value)
    assert init_text in message and resume_text in message and choice in message


def test_a_model_in_the_way_is_refused_only_where_asked(tiny_model):
    _, folder = tiny_model
    TrainRequest(out=folder, init="scratch").check()  # the API: behind the regression guard
    with pytest.raises(ValueError, match=r"--out .* already holds a model: continue it with"):
        TrainRequest(out=folder, refuse_existing=True, where="cli").check()
    with pytest.raises(ValueError, match="already holds a model"):
        TrainRequest(out=folder, refuse_existing=True, where="widget").check(continues_model=True)


def test_resume_returns_the_model_to_continue_and_checks_its_labels_kind(tmp_path, tiny_model):
    _, folder = tiny_model
    spec = TrainRequest(out=folder, resume=True).check()
    assert spec is not None and spec.labels.kind == "instances"
    with pytest.raises(ValueError, match="--labels-kind sparse: the model in .* instances"):
        TrainRequest(out=folder, resume=True, labels_kind="sparse", where="cli").check()
    with pytest.raises(ValueError, match="holds no model to resume"):
        TrainRequest(out=tmp_path / "empty", resume=True).check()
    with pytest.raises(ValueError, match=r"resume=True needs the model folder"):
        TrainRequest(resume=True).check()


def test_output_folder_device_and_builtin_are_checked(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--out .*file.txt is a file, not a folder"):
        TrainRequest(out=a_file, where="cli").check()
    with pytest.raises(ValueError, match=r"file.txt is a file, not a folder"):
        TrainRequest(out=a_file / "below").check()
    with pytest.raises(ValueError, match="device='gpu0'"):
        TrainRequest(device="gpu0").check()
    with pytest.raises(ReadOnlyModelError, match="cannot train into builtin:nuclei"):
        TrainRequest(out="builtin:nuclei").check()
    with pytest.raises(ValueError, match="--init .*no-such-model: model folder does not exist"):
        TrainRequest(init=str(tmp_path / "no-such-model"), where="cli").check()


def test_architecture_against_the_start_model_names_both(tmp_path):
    from napari_unet.store import load_model

    width = load_model("builtin:nuclei").config.model.width
    other = width * 2
    with pytest.raises(ValueError, match="width") as info:
        TrainRequest(init="builtin:nuclei", width=other, where="cli").check()
    assert "builtin:nuclei" in str(info.value)
    assert f"width {other}" in str(info.value) and f"width {width}" in str(info.value)
    TrainRequest(init="builtin:nuclei", width=width, where="cli").check()  # its own: fine


def test_a_request_crosses_to_the_child_process_unchanged(tmp_path):
    request = TrainRequest.from_keywords(
        TrainConfig(steps=5, augment_scale=(0.9, 1.1)),
        labels_kind="sparse",
        class_names=["cell", "edge"],
        out=tmp_path / "m",
        where="widget",
        names=Names([("image layer 'a'", "labels layer 'b'")], model="the model in m"),
    )
    back = decode(encode(request, tmp_path), tmp_path)
    assert back == request
    assert dataclasses.asdict(back) == dataclasses.asdict(request)
