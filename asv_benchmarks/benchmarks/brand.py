"""Brand updates (paper 001, Alg. 2-3) at the paper's sizes."""

import numpy as np

from lowrank_online import eigh_update, svd_update

from .common import BATCH, RANK, b_update_problem, best_time, gemm_rate


class EighUpdate:
    """One B-update: eigh_update(rho L, sqrt(1-rho) A) with r = 220, n = 256."""

    params = ([1024, 4096, 16384], ["float64", "float32"])
    param_names = ["d", "dtype"]
    timeout = 300

    def setup(self, d, dtype):
        self.L, self.Q, self.A = b_update_problem(d, dtype=np.dtype(dtype))

    def time_eigh_update(self, d, dtype):
        eigh_update(self.L, self.Q, self.A, decay=0.95, weight=0.05)

    def peakmem_eigh_update(self, d, dtype):
        eigh_update(self.L, self.Q, self.A, decay=0.95, weight=0.05)

    def track_gemm_fraction(self, d, dtype):
        """Fraction of the measured GEMM rate under the model 4drn + 4dn^2 + 2d(r+n)^2."""
        r, n = RANK, BATCH
        flops = 4 * d * r * n + 4 * d * n * n + 2 * d * (r + n) ** 2
        t = best_time(lambda: eigh_update(self.L, self.Q, self.A, decay=0.95, weight=0.05))
        return flops / t / gemm_rate(np.dtype(dtype))

    track_gemm_fraction.unit = "fraction"


class SvdUpdate:
    """One general Brand update: m = d, r = 220, n = 256."""

    params = [1024, 4096]
    param_names = ["d"]
    timeout = 300

    def setup(self, d):
        rng = np.random.default_rng(1)
        self.U, _ = np.linalg.qr(rng.standard_normal((d, RANK)))
        V, _ = np.linalg.qr(rng.standard_normal((d, RANK)))
        self.Vh = V.T.copy()
        self.S = np.sort(rng.gamma(2.0, size=RANK))[::-1].copy()
        self.A = rng.standard_normal((d, BATCH))
        self.B = rng.standard_normal((d, BATCH))

    def time_svd_update(self, d):
        svd_update(self.U, self.S, self.Vh, self.A, self.B)
