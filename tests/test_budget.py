"""The wall-time budget's accounting (napari_unet.budget), with a clock the test moves."""

import pytest

from napari_unet.budget import PHASES, SEARCH_SHARE, WallBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_phases_add_up_to_the_wall_time_and_training_is_the_rest():
    clock = Clock()
    budget = WallBudget(time_budget=60, steps=None, clock=clock, began=-4.0)
    assert budget.start() == 0.0 and budget.phases["prepare"] == 4.0
    for phase, seconds in (("validate", 1.5), ("save", 0.5), ("validate", 2.0)):
        with budget.timed(phase) as timing:
            clock.now += seconds
        assert timing.seconds == seconds
    clock.now += 10.0  # steps, not timed: they are what the others leave
    phases, total = budget.close()
    assert total == 4.0 + 14.0 and set(phases) == set(PHASES)
    assert phases["validate"] == 3.5 and phases["save"] == 0.5
    assert phases["train"] == 10.0 and sum(phases.values()) == pytest.approx(total)


def test_a_block_that_raises_is_still_counted():
    clock = Clock()
    budget = WallBudget(time_budget=None, steps=10, clock=clock)
    with pytest.raises(RuntimeError), budget.timed("calibrate"):
        clock.now += 3.0
        raise RuntimeError("search failed")
    assert budget.phases["calibrate"] == 3.0


def test_the_finish_it_reserves_grows_with_what_it_will_do():
    budget = WallBudget(time_budget=100, steps=None, clock=Clock())
    budget.start()
    budget.val_seconds, budget.save_seconds = 2.0, 1.0
    alone = budget.reserve()
    assert alone == 2.0 + 1.0  # no calibration: one validation and the save
    budget.validations = 3  # the start model and the previous one scored too
    assert budget.reserve() == alone + 4.0
    budget.validation_pixels, budget.calibration_pixels = 1000, 1000
    with_calibration = budget.reserve()
    assert with_calibration > alone + 4.0  # predicting the calibration images
    assert with_calibration - (alone + 4.0) >= SEARCH_SHARE * 100  # the search's share
    assert budget.progress(0, budget.deadline()) == pytest.approx(1.0)


def test_steps_or_time_whichever_is_spent_first():
    clock = Clock()
    budget = WallBudget(time_budget=100, steps=10, clock=clock)
    budget.start()
    assert budget.progress(5, 0.0) == 0.5
    assert budget.progress(1, budget.deadline()) == pytest.approx(1.0)
    assert WallBudget(time_budget=None, steps=10, clock=clock).progress(10, 1e9) == 1.0


def test_the_search_stops_in_time_for_the_save_but_gets_a_quarter_of_its_share():
    clock = Clock()
    budget = WallBudget(time_budget=60, steps=None, clock=clock)
    budget.start()
    budget.save_seconds = 2.0
    assert budget.search_deadline() == 58.0
    clock.now = 70.0  # already late: still a quarter of the search's share
    assert budget.search_deadline() == pytest.approx(70.0 + SEARCH_SHARE * 60 / 4)
    assert WallBudget(time_budget=None, steps=5, clock=clock).search_deadline() is None
