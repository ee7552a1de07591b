"""Recipe files (``train --config FILE``): the shipped ones, bad files, flags over the file."""

import json
from pathlib import Path

import pytest
import torch

from napari_unet.cli import main
from napari_unet.config import TrainConfig
from napari_unet.recipes import KEYS, read_recipe, train_arguments
from napari_unet.store import load_model
from napari_unet.training import defaults_for

RECIPES = Path(__file__).parents[1] / "resources" / "recipes"


@pytest.mark.parametrize("name", ["fast-cpu", "fast-gpu", "paper-cpu", "paper-gpu"])
def test_shipped_recipes_are_the_defaults(name):
    """Each file says what training does on that device without it: they cannot drift."""
    settings = read_recipe(RECIPES / f"{name}.json")
    recipe, where = name.split("-")
    d = defaults_for(torch.device("cpu" if where == "cpu" else "cuda"), recipe)
    assert settings["recipe"] == recipe
    assert (settings["width"], settings["patch"], settings["batch_size"], settings["lr"]) == (
        d.width,
        d.patch,
        d.batch_size,
        d.lr,
    )
    args = train_arguments(settings)
    assert isinstance(args["config"], TrainConfig) and args["config"].recipe == recipe
    assert "description" not in args


def write(tmp_path, text, name="r.json"):
    path = tmp_path / name
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"recipe": "fast", "widht": 8}, "unknown key 'widht'"),
        ('{"width": 8, "width": 16}', "key 'width' is given twice"),
        ("{not json", "not a JSON recipe"),
        ("[1, 2]", "must be a JSON object of settings, got [1, 2]"),
        ({"labels_kind": "blobs"}, "labels_kind must be one of sparse, semantic, instances"),
    ],
)
def test_bad_recipe_files_are_named(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ValueError, match="recipe .*r.json") as err:
        read_recipe(path)
    assert message in str(err.value)


def test_missing_recipe_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="recipe .*nope.json: No such file"):
        read_recipe(tmp_path / "nope.json")
    with pytest.raises(ValueError, match=r"recipe r.json: lr must be in \[1e-08, 10.0\], got -1"):
        train_arguments({"lr": -1}, "recipe r.json")
    assert set(KEYS) >= {"recipe", "time_budget", "width", "precision", "labels_kind"}


def test_cli_train_reads_a_recipe_and_flags_override_it(nuclei_files, tmp_path, capsys):
    images, labels = nuclei_files
    recipe = write(
        tmp_path,
        {
            "recipe": "fast",
            "time_budget": 1000,
            "width": 4,
            "depth": 2,
            "patch": 32,
            "batch_size": 2,
            "seed": 3,
            "labels_kind": "instances",
        },
    )
    out = tmp_path / "m"
    code = main(
        ["train", "--images", str(images), "--labels", str(labels), "--out", str(out),
         "--config", str(recipe), "--steps", "3", "--width", "6", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    model = load_model(out)
    assert model.config.model.width == 6  # the flag wins over the file
    assert model.config.model.depth == 2 and model.config.train.batch_size == 2  # the file's
    assert model.config.train.seed == 3 and model.config.labels.kind == "instances"
    # --steps replaces the file's time budget: one budget, the command line's
    assert model.config.train.steps == 3 and model.config.train.time_budget is None
    assert model.history["steps"] == 3
    assert "width 6, depth 2, patch 32, batch 2" in capsys.readouterr().out


def test_cli_refuses_a_recipe_with_an_unknown_key(nuclei_files, tmp_path, capsys):
    images, labels = nuclei_files
    recipe = write(tmp_path, {"recipe": "fast", "epochs": 10})
    out = tmp_path / "m"
    code = main(
        ["train", "--images", str(images), "--labels", str(labels), "--out", str(out),
         "--config", str(recipe)]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "unknown key 'epochs'" in err and str(recipe) in err
    assert not out.exists()


@pytest.fixture(scope="module")
def nuclei_files(tmp_path_factory):
    import tifffile

    from .conftest import make_nuclei

    root = tmp_path_factory.mktemp("recipe_data")
    (root / "i").mkdir()
    (root / "l").mkdir()
    for i in range(3):
        img, lab = make_nuclei(shape=(64, 64), seed=30 + i)
        tifffile.imwrite(root / "i" / f"n{i}.tif", img)
        tifffile.imwrite(root / "l" / f"n{i}.tif", lab)
    return root / "i", root / "l"
