"""What a decode step of a given batch would take, before it runs.

A decode step reads the weights once (a fixed part), does some work for each row (sampling, the
codec's windows, the host's bookkeeping) and reads each row's KV cache, which grows by a token
with every id: its time is close to `fixed + per_row * rows + per_token * context tokens`. The
plane is fitted online, by exponentially weighted least squares over the steps the engine runs,
so it follows the GPU, the model, its precision and its KV cache's format without any setting.
The context term is what makes a long stream cost more at its end than at its start: Orpheus-3B's
16-bit cache holds 112 KiB a token, 27 ns at the H200's 4.2 TB/s, so 256 streams at 1,000 tokens
add some 7 ms to every step.
"""

from __future__ import annotations

# Rows² of spread in the batch sizes seen before the slope is trusted; until then (one batch
# size only) a bigger batch is predicted to cost what steps cost now.
_MIN_ROWS_VARIANCE = 4.0
# Rows and context tokens more correlated than this (r²) cannot be told apart: the fit then
# keeps to the rows, at the context per row seen so far.
_MAX_CORRELATION = 0.999


class StepCost:
    def __init__(self, horizon_steps: int = 1000):
        self._alpha = 1.0 / horizon_steps
        self._steps = 0
        self._mean_rows = self._mean_tokens = self._mean_s = 0.0
        self._var_rows = self._var_tokens = 0.0
        self._cov_rows_tokens = self._cov_rows_s = self._cov_tokens_s = 0.0

    def observe(self, rows: int, seconds: float, tokens: int = 0) -> None:
        """Record a step of `rows` rows, whose contexts held `tokens` tokens in all, that took `seconds`."""
        self._steps += 1
        alpha = max(self._alpha, 1.0 / self._steps)  # plain means until the horizon fills
        d_rows, d_tokens, d_s = rows - self._mean_rows, tokens - self._mean_tokens, seconds - self._mean_s
        self._mean_rows += alpha * d_rows
        self._mean_tokens += alpha * d_tokens
        self._mean_s += alpha * d_s
        keep = 1 - alpha
        self._var_rows = keep * (self._var_rows + alpha * d_rows * d_rows)
        self._var_tokens = keep * (self._var_tokens + alpha * d_tokens * d_tokens)
        self._cov_rows_tokens = keep * (self._cov_rows_tokens + alpha * d_rows * d_tokens)
        self._cov_rows_s = keep * (self._cov_rows_s + alpha * d_rows * d_s)
        self._cov_tokens_s = keep * (self._cov_tokens_s + alpha * d_tokens * d_s)

    def coefficients(self) -> tuple[float, float, float]:
        """(fixed, per row, per context token) seconds; all 0 before any step was seen."""
        if self._var_rows < _MIN_ROWS_VARIANCE and self._var_tokens < _MIN_ROWS_VARIANCE:
            return self._mean_s, 0.0, 0.0
        vr, vt, crt = self._var_rows, self._var_tokens, self._cov_rows_tokens
        det = vr * vt - crt * crt
        if vr >= _MIN_ROWS_VARIANCE and vt > 0 and det > (1 - _MAX_CORRELATION) * vr * vt:
            per_row = (self._cov_rows_s * vt - self._cov_tokens_s * crt) / det
            per_token = (self._cov_tokens_s * vr - self._cov_rows_s * crt) / det
            if per_row >= 0 and per_token >= 0:
                return self._line(per_row, per_token)
        if vr >= _MIN_ROWS_VARIANCE:  # the rows alone: their contexts' cost rides on the slope
            return self._line(max(self._cov_rows_s / vr, 0.0), 0.0)
        return self._line(0.0, max(self._cov_tokens_s / vt, 0.0))

    def _line(self, per_row: float, per_token: float) -> tuple[float, float, float]:
        fixed = self._mean_s - per_row * self._mean_rows - per_token * self._mean_tokens
        return max(fixed, 0.0), per_row, per_token

    def tokens_per_row(self) -> float:
        """The context a decoded row has held on average lately."""
        return self._mean_tokens / self._mean_rows if self._mean_rows > 0 else 0.0

    def predict(self, rows: int, tokens: float | None = None) -> float:
        """Seconds a step of `rows` rows holding `tokens` context tokens would take (None: at the
        context per row seen lately); 0 before any step was seen."""
        fixed, per_row, per_token = self.coefficients()
        if tokens is None:
            tokens = rows * self.tokens_per_row()
        return fixed + per_row * rows + per_token * tokens


def seed_from_graphs(cost: StepCost, graphs, observations: int = 10) -> None:
    """Give the fit the captured decode step's time at the smallest, a middle and the largest
    batch (`DecodeGraphs`; nothing without graphs), so capacity admission knows the slope before
    the first burst (a fit of one batch size would take every batch to cost the same). Only the
    forward is in these, at a context of one token a row; the steps that run add the codec's and
    the host's share, and the contexts' growth, within seconds."""
    if graphs is None:
        return
    buckets = graphs.buckets
    for bucket in sorted({buckets[0], buckets[len(buckets) // 2], buckets[-1]}):
        seconds = graphs.replay_seconds(bucket)
        for _ in range(observations):
            cost.observe(bucket, seconds, bucket)
