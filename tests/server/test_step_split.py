"""`orpheus_bench.engine_load.split_steps`: a level's steps with a prefill in them told apart from the
decode-only ones, whose line is what capacity admission's projection should follow."""

import numpy as np
import pytest

from orpheus_bench.engine_load import split_steps


def test_prefill_steps_and_the_step_after_them_are_kept_out_of_the_decode_line():
    rows = np.arange(8, 72, 2, dtype=float)
    decode_s = 0.004 + 20e-6 * rows  # 4 ms + 20 us a row
    prefill = np.zeros_like(rows)
    prefill[::5] = 3  # a prefill launched every fifth step...
    seconds = decode_s.copy()
    seconds[::5] += 0.006  # ...costs its own step 6 ms
    seconds[1::5] += 0.006  # and the next, which waits for its ids
    split = split_steps(np.column_stack([seconds, rows, prefill]))
    assert split["prefill_steps"] == 14 and split["decode_only_steps"] == len(rows) - 14
    assert split["decode_only_fixed_ms"] == pytest.approx(4.0) and split["decode_only_per_row_us"] == pytest.approx(20.0)
    assert split["prefill_step_ms_mean"] > split["decode_step_ms_mean"] + 5


def test_one_batch_size_gives_no_line_but_still_the_means():
    steps = np.array([[0.005, 16, 0], [0.005, 16, 0], [0.011, 16, 2], [0.010, 16, 0]])
    split = split_steps(steps)
    assert "decode_only_per_row_us" not in split
    assert (split["prefill_steps"], split["decode_only_steps"]) == (2, 2)
    assert split["decode_step_ms_mean"] == pytest.approx(5.0) and split["prefill_step_ms_mean"] == pytest.approx(10.5)
