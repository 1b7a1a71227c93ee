"""One preconditioner step per method: factor update + inverse update + application.

Layer of 4096 inputs x 1024 outputs, batch 256, r = 220; kfac only with LOWRANK_ASV_LARGE=1. Every step recomputes the
inverse representation (T_inv = T_Brand = T_RSVD = T_corct = 1), so the time is that of an
inverse-update step; amortised figures come from ``python benchmarks/bench.py curvature``.
"""

import numpy as np

from lowrank_online.curvature import KFACPreconditioner

from .common import LARGE

D_IN, D_OUT, BATCH, RANK = 4096, 1024, 256, 220


class PreconditionerStep:
    # kfac's dense eigendecomposition of the 4097 x 4097 factor takes most of a minute per call
    params = (["kfac"] if LARGE else []) + ["rkfac", "bkfac", "brkfac", "bkfacc", "auto"]
    param_names = ["method"]
    timeout = 600

    def setup(self, method):
        rng = np.random.default_rng(0)
        decay_a = 0.99 ** np.arange(D_IN + 1)
        decay_g = 0.99 ** np.arange(D_OUT)
        self.batches = [
            (rng.standard_normal((BATCH, D_IN + 1)) * decay_a, rng.standard_normal((BATCH, D_OUT)) * decay_g)
            for _ in range(2)
        ]
        self.pre = KFACPreconditioner(method, rank=RANK, T_inv=1, T_brand=1, T_rsvd=1, T_corct=1)
        a, g = self.batches[0]
        self.pre.update("fc", a, g)
        self.pre.step()
        self.grad = g.T @ a / BATCH

    def time_step(self, method):
        a, g = self.batches[1]
        self.pre.update("fc", a, g)
        self.pre.precondition("fc", self.grad)
        self.pre.step()

    def time_factored_application(self, method):
        a, g = self.batches[1]
        self.pre.precondition_factored("fc", g / BATCH, a)

    def peakmem_step(self, method):
        a, g = self.batches[1]
        self.pre.update("fc", a, g)
        self.pre.precondition("fc", self.grad)


class EKFACFromSums:
    """EKFAC fed as data-parallel processes feed it (issue 15): Gram factors plus the moments of
    each block of rows in the eigenbasis, against the same batch as rows. A 1024 x 512 layer,
    batch 2048 in two blocks of 1024; a step between eigenbasis recomputations (T_inv large),
    so the time is the averages and the scalings, not the EVD."""

    timeout = 300

    def setup(self):
        from lowrank_online.curvature import Gram

        rng = np.random.default_rng(0)
        self.a, self.g = rng.standard_normal((2048, 1025)), rng.standard_normal((2048, 512))
        self.blocks = [(self.a[:1024], self.g[:1024]), (self.a[1024:], self.g[1024:])]
        self.grams = (Gram(self.a.T @ self.a / 2048, 2048), Gram(self.g.T @ self.g / 2048, 2048))
        self.pre = KFACPreconditioner("ekfac", T_inv=10**6)
        self.pre.update("fc", self.a, self.g)
        self.pre.step()

    def time_moments_of_one_block(self):
        x, y = self.blocks[0]
        self.pre.eigenbasis_moments("fc", x, y)

    def time_update_from_sums(self):
        moments = sum(self.pre.eigenbasis_moments("fc", x, y) for x, y in self.blocks)
        self.pre.update("fc", *self.grams, moments=moments)

    def time_update_from_rows(self):
        self.pre.update("fc", self.a, self.g)
