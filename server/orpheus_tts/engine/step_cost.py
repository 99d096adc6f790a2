"""What a decode step of a given batch would take, before it runs.

A decode step reads the weights once (a fixed part) and each row's KV cache (a part per row),
so its time is close to a straight line in the batch size. The line is fitted online, by
exponentially weighted least squares over the steps the engine runs, so it follows the GPU,
the model, its precision and the contexts in use without any setting.
"""

from __future__ import annotations

# Rows² of spread in the batch sizes seen before the slope is trusted; until then (one batch
# size only) a bigger batch is predicted to cost what steps cost now.
_MIN_ROWS_VARIANCE = 4.0


class StepCost:
    def __init__(self, horizon_steps: int = 1000):
        self._alpha = 1.0 / horizon_steps
        self._steps = 0
        self._mean_rows = 0.0
        self._mean_s = 0.0
        self._var_rows = 0.0
        self._cov = 0.0  # of rows and seconds

    def observe(self, rows: int, seconds: float) -> None:
        """Record a step of `rows` rows that took `seconds`."""
        self._steps += 1
        alpha = max(self._alpha, 1.0 / self._steps)  # plain means until the horizon fills
        d_rows, d_s = rows - self._mean_rows, seconds - self._mean_s
        self._mean_rows += alpha * d_rows
        self._mean_s += alpha * d_s
        self._var_rows = (1 - alpha) * (self._var_rows + alpha * d_rows * d_rows)
        self._cov = (1 - alpha) * (self._cov + alpha * d_rows * d_s)

    def predict(self, rows: int) -> float:
        """Seconds a step of `rows` rows would take; 0 before any step was seen."""
        if self._var_rows < _MIN_ROWS_VARIANCE:
            return self._mean_s
        per_row = max(self._cov / self._var_rows, 0.0)
        fixed = max(self._mean_s - per_row * self._mean_rows, 0.0)
        return fixed + per_row * rows


def seed_from_graphs(cost: StepCost, graphs, observations: int = 10) -> None:
    """Give the fit the captured decode step's time at the smallest, a middle and the largest
    batch (`DecodeGraphs`; nothing without graphs), so capacity admission knows the slope before
    the first burst (a fit of one batch size would take every batch to cost the same). Only the
    forward is in these; the steps that run add the codec's and the host's share within seconds."""
    if graphs is None:
        return
    buckets = graphs.buckets
    for bucket in sorted({buckets[0], buckets[len(buckets) // 2], buckets[-1]}):
        seconds = graphs.replay_seconds(bucket)
        for _ in range(observations):
            cost.observe(bucket, seconds)
