"""The events' one-line descriptions, shared by the CLI and the Train widget."""

from napari_unet import events as ev


def test_started_and_step_lines_name_every_setting():
    started = ev.TrainStarted(
        device="cpu, 2 threads", n_train=3, n_val=1, start_step=0, max_steps=10,
        time_budget=None,
        settings={"recipe": "fast", "width": 8, "depth": 4, "patch": 128, "batch_size": 8,
                  "lr": 0.003},
    )  # fmt: skip
    assert started.describe() == (
        "recipe fast, width 8, depth 4, patch 128, batch 8, lr 0.003; "
        "3 training / 1 validation images"
    )
    step = ev.TrainStep(step=12, loss=0.123456, lr=0.001, images_per_s=41.26, elapsed=9.6)
    assert step.describe() == "step 12  loss 0.1235  41.3 patches/s  10 s"
