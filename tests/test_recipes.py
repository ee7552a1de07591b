"""Recipe files (``train --config FILE``): the shipped ones, bad files, flags over the file."""

import json
from pathlib import Path

import pytest
import torch

from napari_unet.cli import main
from napari_unet.config import TrainConfig
from napari_unet.recipes import KEYS, get_recipe, read_recipe, train_arguments
from napari_unet.store import load_model

RECIPES = Path(__file__).parents[1] / "resources" / "recipes"


@pytest.mark.parametrize("name", ["fast-cpu", "fast-gpu", "paper-cpu", "paper-gpu"])
def test_shipped_recipes_are_the_defaults(name):
    """Each file says what training does on that device without it: they cannot drift."""
    settings = read_recipe(RECIPES / f"{name}.json")
    recipe, where = name.split("-")
    d = get_recipe(recipe).defaults("cpu" if where == "cpu" else "cuda")
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


def test_a_recipe_is_one_object_the_training_asks():
    """Optimizer, learning rate over the schedule and loss come from the recipe."""
    from napari_unet.recipes import FAST, PAPER, lr_factor

    with pytest.raises(ValueError, match="recipe must be one of fast, paper, got 'slow'"):
        get_recipe("slow")
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(FAST.make_optimizer(params, 1e-3, 1e-4), torch.optim.AdamW)
    sgd = PAPER.make_optimizer(params, 1e-3, 1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.99
    assert PAPER.lr_at(1e-3, 0.5, 10) == 1e-3  # constant
    assert FAST.lr_at(1e-3, 0.5, 100) == pytest.approx(1e-3 * lr_factor(0.5, 100, 50))
    assert FAST.lr_at(1e-3, 0.0, 0) < FAST.lr_at(1e-3, 0.01, 49)  # warming up
    assert FAST.lr_at(1e-3, 1.0, 5000) == pytest.approx(2e-5)  # decayed to 2 %
    logits, target = torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), -1)
    target[0, 0] = 1  # one labeled row
    teacher = torch.randn(1, 3, 4, 4)
    plain = FAST.loss(logits, target)
    assert float(plain) == pytest.approx(float(torch.log(torch.tensor(3.0))))
    assert float(FAST.loss(logits, target, teacher_logits=teacher, distill=0.0)) == float(plain)
    assert float(FAST.loss(logits, target, teacher_logits=teacher, distill=5.0)) > float(plain)
