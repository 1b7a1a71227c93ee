"""Kronecker toolkit (papers 002-004): matrix-free products with R(F), power / Lanczos to
tol 1e-6, the dense-vs-matrix-free crossover, the A⊗B + C⊗D solve, and Lanczos against
SciPy's PROPACK in the same run."""

import numpy as np

from lowrank_online import FisherBlockOperator, KronSumInverse, kpsvd, lanczos_svd, nearest_kron, power_svd

from .common import BATCH, _measure, best_time, gemm_rate


def fisher_statistics(n, d_a, d_g, seed=0):
    """Activations with a bias column and gradients whose scale depends on them (K-FAC
    inexact), the shape of a real layer's statistics."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d_a)) * np.linspace(1.0, 0.3, d_a)
    a[:, -1] = 1.0
    mix = rng.standard_normal((d_a, d_g)) / np.sqrt(d_a)
    g = np.tanh(a @ mix) * (0.5 + a[:, :1] ** 2) + 0.3 * rng.standard_normal((n, d_g))
    return a, g


class FisherProduct:
    """One product with R(F) (d_g^2 x d_a^2), d_a = d_g = d, N = 256: O(N d^2), F never formed."""

    params = [64, 256, 1024]
    param_names = ["d"]
    timeout = 300

    def setup(self, d):
        a, g = fisher_statistics(BATCH, d, d)
        self.op = FisherBlockOperator(a, g)
        rng = np.random.default_rng(1)
        self.v = rng.standard_normal((d * d, 1))
        self.u = rng.standard_normal((d * d, 1))

    def time_matmat(self, d):
        self.op.matmat(self.v)

    def time_rmatmat(self, d):
        self.op.rmatmat(self.u)

    def peakmem_matmat(self, d):
        self.op.matmat(self.v)

    def track_gemm_fraction(self, d):
        """Fraction of the machine's GEMM rate under the flop model of benchmarks/_measure.py (4 N d^2)."""
        flops = _measure.fisher_product_flops(BATCH, d, d)
        return flops / best_time(lambda: self.op.matmat(self.v), 5) / gemm_rate()

    track_gemm_fraction.unit = "fraction"


class DenseCrossover:
    """Where the matrix-free product (and KPSVD) beats forming R(F): d_a = d_g = d, N = 256.

    The dense product is a GEMV with the stored d^2 x d^2 matrix (formed in setup, not timed);
    the dense KPSVD forms F and takes the SVD of its rearrangement (nearest_kron).
    """

    params = [8, 16, 24, 32]
    param_names = ["d"]
    timeout = 300

    def setup(self, d):
        self.a, self.g = fisher_statistics(BATCH, d, d)
        self.op = FisherBlockOperator(self.a, self.g)
        self.R = self.op.rearranged()
        self.v = np.random.default_rng(1).standard_normal((d * d, 1))

    def time_product_dense(self, d):
        self.R @ self.v

    def time_product_matrix_free(self, d):
        self.op.matmat(self.v)

    def time_kpsvd_dense(self, d):
        nearest_kron(FisherBlockOperator(self.a, self.g).to_dense(), (d, d), (d, d))

    def time_kpsvd_matrix_free(self, d):
        kpsvd(self.a, self.g)

    def track_product_speedup(self, d):
        """Dense GEMV time / matrix-free product time (> 1: matrix-free wins)."""
        return best_time(lambda: self.R @ self.v, 5) / best_time(lambda: self.op.matmat(self.v), 5)

    def track_kpsvd_speedup(self, d):
        """Dense nearest_kron (form F + SVD) / matrix-free kpsvd."""
        dense = best_time(lambda: nearest_kron(self.op.to_dense(), (d, d), (d, d)), 1)
        return dense / best_time(lambda: kpsvd(self.a, self.g), 3)

    track_product_speedup.unit = "ratio"
    track_kpsvd_speedup.unit = "ratio"


class PowerLanczos:
    """Power SVD (one triplet) and Lanczos (two) on R(F) to tol 1e-6, N = 256."""

    params = [64, 256]
    param_names = ["d"]
    timeout = 300

    def setup(self, d):
        a, g = fisher_statistics(BATCH, d, d)
        self.op = FisherBlockOperator(a, g)
        self.v0 = np.reshape(self.op.kfac().right[0], (-1,))

    def time_power_svd(self, d):
        power_svd(self.op, tol=1e-6)

    def time_power_svd_kfac_start(self, d):
        power_svd(self.op, v0=self.v0, tol=1e-6)

    def time_lanczos_svd(self, d):
        lanczos_svd(self.op, 2, krylov_dim=10, tol=1e-6)

    def track_power_iterations(self, d):
        return power_svd(self.op, tol=1e-6).iterations

    def track_power_iterations_kfac_start(self, d):
        return power_svd(self.op, v0=self.v0, tol=1e-6).iterations

    def track_lanczos_iterations(self, d):
        return lanczos_svd(self.op, 2, krylov_dim=10, tol=1e-6).iterations

    track_power_iterations.unit = "steps"
    track_power_iterations_kfac_start.unit = "steps"
    track_lanczos_iterations.unit = "steps"


class KronSumSolve:
    """(A⊗B + C⊗D)^{-1}: setup (two eigh per side) and one matrix-form apply, p = q = d."""

    params = [256, 1024]
    param_names = ["d"]
    timeout = 300

    def setup(self, d):
        a, g = fisher_statistics(4 * d, d, d)
        self.ks = kpsvd(a, g, terms=2, method="lanczos")
        self.solver = KronSumInverse.from_kronsum(self.ks, damping=1e-3)
        self.V = np.random.default_rng(1).standard_normal((d, d))

    def time_setup(self, d):
        KronSumInverse.from_kronsum(self.ks, damping=1e-3)

    def time_apply(self, d):
        self.solver.apply(self.V)


class LanczosVsPropack:
    """Top-10 singular triplets of a dense 4000 x 4000 matrix: lanczos_svd against
    scipy.sparse.linalg.svds(solver="propack"), both to relative tolerance 1e-6."""

    params = [4000]
    param_names = ["n"]
    timeout = 600

    def setup(self, n):
        try:
            from scipy.sparse.linalg import svds
        except ImportError as err:
            raise NotImplementedError("scipy is not installed") from err
        rng = np.random.default_rng(0)
        r = 300
        U, _ = np.linalg.qr(rng.standard_normal((n, r)))
        V, _ = np.linalg.qr(rng.standard_normal((n, r)))
        self.A = (U * 0.95 ** np.arange(r)) @ V.T + 1e-4 * rng.standard_normal((n, n)) / np.sqrt(n)
        self.peer = lambda: svds(self.A, 10, solver="propack", tol=1e-6, random_state=0)
        self.ours = lambda: lanczos_svd(self.A, 10, tol=1e-6)  # blocks of 8 on an array
        self.single = lambda: lanczos_svd(self.A, 10, tol=1e-6, block_size=1)

    def time_lanczos_svd(self, n):
        self.ours()

    def time_lanczos_svd_single_vector(self, n):
        self.single()

    def time_propack(self, n):
        self.peer()

    def track_time_ratio_to_propack(self, n):
        """lanczos_svd time / PROPACK time (issue 17's target: <= 0.8)."""
        return best_time(self.ours, 3) / best_time(self.peer, 3)

    track_time_ratio_to_propack.unit = "ratio"
