"""Brand updates (paper 001, Alg. 2-3) at the paper's sizes."""

import numpy as np

from lowrank_online import eigh_update, svd_update

from .common import BATCH, RANK, _measure, b_update_problem, best_time, gemm_rate

RANK_WIDE = 64  # held rank of the wide-batch benchmark (the convolution layer)


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
        """Fraction of the measured GEMM rate under the flop model of benchmarks/_measure.py
        (4drn + dn(n+1) + 2d(r+n)^2)."""
        flops = _measure.eigh_update_flops(d, RANK, BATCH)
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


class WideBatchUpdate:
    """One B-update with more columns than the dimension (a convolution layer's batch x
    positions), r = min(64, d), against the dense alternative on the same batch: a held
    d x d average updated with A A^T and eigendecomposed.

    The update goes through A A^T and one d x d eigendecomposition (it went through the
    n x n Gram matrix of the complement, 33-82 s at d = 145, n = 4096). Targets: the ratio is
    at most about 1, and n = 8192 costs at most 2.5x n = 4096.
    """

    params = [[(145, 4096), (145, 8192), (10, 2048)], ["float64", "float32"]]
    param_names = ["d_n", "dtype"]
    timeout = 120

    def setup(self, d_n, dtype):
        d, n = d_n
        self.L, self.Q, self.A = b_update_problem(d, r=min(RANK_WIDE, d), n=n, dtype=np.dtype(dtype))
        self.M = (self.Q * self.L) @ self.Q.T  # the dense alternative's held average

    def _b_update(self):
        return eigh_update(self.L, self.Q, self.A, decay=0.95, weight=0.05)

    def _dense(self):
        return np.linalg.eigh(0.95 * self.M + 0.05 * (self.A @ self.A.T))

    def time_b_update(self, d_n, dtype):
        self._b_update()

    def time_dense_alternative(self, d_n, dtype):
        self._dense()

    def peakmem_b_update(self, d_n, dtype):
        self._b_update()

    def track_ratio_to_dense(self, d_n, dtype):
        """B-update time / dense alternative time, best of 5 each, measured in one run."""
        return best_time(self._b_update, 5) / best_time(self._dense, 5)

    track_ratio_to_dense.unit = "ratio"
