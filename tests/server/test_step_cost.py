"""The step-time fit the prefill wait and capacity admission project load with."""

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


def test_steps_of_several_sizes_and_contexts_give_the_part_per_context_token():
    cost = StepCost()
    for rows in range(1, 256, 5):  # 2 ms + 10 us a row + 30 ns a context token, contexts of 64 to 1,024
        for per_row in (64, 256, 1024):
            cost.observe(rows, 0.002 + 1e-5 * rows + 3e-8 * rows * per_row, rows * per_row)
    fixed, per_row, per_token = cost.coefficients()
    assert (fixed, per_row, per_token) == pytest.approx((0.002, 1e-5, 3e-8), rel=1e-3)
    assert cost.predict(256, 256 * 1024) == pytest.approx(0.002 + 256 * (1e-5 + 3e-8 * 1024), rel=1e-3)
    assert cost.predict(256) == pytest.approx(cost.predict(256, 256 * cost.tokens_per_row()))


def test_contexts_that_only_follow_the_rows_leave_the_cost_on_the_rows():
    cost = StepCost()
    for rows in list(range(1, 200, 7)) * 5:  # every row at 100 tokens: the two cannot be told apart
        cost.observe(rows, 0.0026 + 0.000027 * rows, 100 * rows)
    assert cost.coefficients() == pytest.approx((0.0026, 0.000027, 0.0), rel=1e-3, abs=1e-12)
