"""The step-time fit the prefill wait projects load with."""

import pytest

from orpheus_tts.engine.step_cost import StepCost


def test_nothing_seen_predicts_nothing():
    assert StepCost().predict(100) == 0.0


def test_one_batch_size_predicts_what_steps_cost_now():
    cost = StepCost()
    for _ in range(50):
        cost.observe(8, 0.004)
    assert cost.predict(64) == pytest.approx(0.004)


def test_steps_of_several_sizes_give_the_fixed_part_and_the_part_per_row():
    cost = StepCost()
    for rows in list(range(1, 200, 7)) * 5:  # a ramp, seen several times: 2.6 ms + 0.027 ms a row
        cost.observe(rows, 0.0026 + 0.000027 * rows)
    assert cost.predict(0) == pytest.approx(0.0026, rel=1e-3)
    assert cost.predict(256) == pytest.approx(0.0026 + 0.000027 * 256, rel=1e-3)


def test_recent_steps_outweigh_old_ones():
    cost = StepCost(horizon_steps=50)
    for rows in list(range(1, 100, 3)) * 4:
        cost.observe(rows, 0.010)  # a slow GPU once...
    for rows in list(range(1, 100, 3)) * 40:
        cost.observe(rows, 0.001 + 0.00001 * rows)  # ...then the steps this line gives
    assert cost.predict(50) == pytest.approx(0.0015, rel=0.05)
