"""How far a step-level loop grows under ``auto``, from the step costs it measured: plain
values in, plain values out (engine/step_costs.py); the scheduler's use of it is in
test_scheduler.py."""

from __future__ import annotations

from diffusers_backend.engine.step_costs import RETRY_AFTER_STEPS, SAMPLES, StepCosts


def _costs(curve: dict[int, float]) -> StepCosts:
    costs = StepCosts()
    for batch, seconds in curve.items():
        costs.record(batch, seconds)
    return costs


def test_nothing_measured_tries_one_size_at_a_time():
    assert StepCosts().room(1, 16) == 1
    assert _costs({1: 1.0}).room(1, 16) == 1  # 2 never measured: try it
    assert _costs({1: 1.0, 2: 1.1}).room(2, 16) == 1


def test_a_step_that_costs_the_sum_keeps_two_lanes():
    """A CPU: a step of b costs b lone steps. Two share (each at half speed); a third
    would only slow everyone down, so it waits its turn."""
    linear = _costs({1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0})
    assert linear.room(1, 16) == 1
    assert linear.room(2, 16) == 0
    assert not linear.worth_growing(2)


def test_a_step_that_costs_about_one_grows_to_the_limit():
    """A GPU below its compute limit: every member is nearly free throughput."""
    flat = _costs({b: 1.0 + 0.05 * (b - 1) for b in range(1, 17)})
    assert flat.room(1, 16) == 15
    assert flat.room(4, 8) == 4  # the memory-aware limit still holds


def test_growth_stops_where_the_device_saturates():
    """Cheap up to 4, then each member costs as much as a lone step."""
    knee = _costs({1: 1.0, 2: 1.1, 3: 1.2, 4: 1.3, 5: 2.3, 6: 3.3})
    assert knee.room(1, 16) == 3
    assert knee.room(4, 16) == 0


def test_the_median_of_recent_steps_is_the_cost():
    costs = _costs({1: 1.0, 2: 2.0, 3: 3.0})
    for _ in range(SAMPLES):  # a fast spell at 3 replaces the old samples
        costs.record(3, 1.5)
    assert costs.cost(3) == 1.5
    assert costs.room(2, 16) >= 1


def test_a_size_judged_too_costly_is_tried_again_later():
    costs = _costs({1: 1.0, 2: 2.0, 3: 3.0})
    assert costs.room(2, 16) == 0
    for _ in range(RETRY_AFTER_STEPS):
        costs.record(2, 2.0)
    assert costs.room(2, 16) == 1
    costs.record(3, 3.0)  # tried: too costly still
    assert costs.room(2, 16) == 0
