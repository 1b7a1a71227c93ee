"""The tracker in steady state and the linear-time damped solve."""

import numpy as np

from lowrank_online import LowRankEMA, damped_solve

from .common import BATCH, RANK, b_update_problem


class EMAUpdate:
    """Steady-state LowRankEMA.update (held rank r + n before truncation)."""

    params = [4096, 16384]
    param_names = ["d"]
    timeout = 300

    def setup(self, d):
        rng = np.random.default_rng(2)
        self.batches = [rng.standard_normal((d, BATCH)) / 16 for _ in range(3)]
        self.ema = LowRankEMA(RANK, decay=0.95, reorthonormalize_every=None)
        for A in self.batches:
            self.ema.update(A)

    def time_update(self, d):
        self.ema.update(self.batches[0])


class DampedSolve:
    """(Q L Q^T + lambda I)^{-1} X for X of shape d x 256: O(d r k)."""

    params = [4096, 16384, 65536]
    param_names = ["d"]

    def setup(self, d):
        self.L, self.Q, self.X = b_update_problem(d)

    def time_damped_solve(self, d):
        damped_solve(self.L, self.Q, self.X, 0.1, continuation=True)
