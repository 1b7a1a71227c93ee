"""The Kronecker toolkit: Fisher-block approximations of one MLP layer, matrix-free against dense."""

from __future__ import annotations

import numpy as np

from ..kronecker import (
    FisherBlockOperator,
    KronSumInverse,
    ekfac_factors,
    kfac_corrected,
    kfac_factors,
    kpsvd,
    lanczos_svd,
    nearest_kron,
    power_svd,
    tkfac_factors,
)
from ..nn.data import mlp_layer_statistics
from ._report import Section, best_time, faster_or_slower


def fisher_errors(a: np.ndarray, g: np.ndarray, tol: float = 1e-8) -> dict[str, float]:
    """Relative Frobenius errors of every approximation against the dense Fisher block."""
    F = FisherBlockOperator(a, g).to_dense()
    norm = np.linalg.norm(F)
    approx = {
        "K-FAC": kfac_factors(a, g).to_dense(),
        "KPSVD": kpsvd(a, g, tol=tol).to_dense(),
        "deflation": kpsvd(a, g, terms=2, method="deflation", tol=tol).to_dense(),
        "Lanczos": kpsvd(a, g, terms=2, method="lanczos", tol=tol).to_dense(),
        "KFAC-corrected": kfac_corrected(a, g, tol=tol).to_dense(),
        "TKFAC": tkfac_factors(a, g).to_kronsum().to_dense(),
        "EKFAC": ekfac_factors(a, g).to_dense(),
    }
    return {name: float(np.linalg.norm(F - M) / norm) for name, M in approx.items()}


# Orderings that hold for any data (paper 002): the one-term KPSVD is the best Kronecker product in
# Frobenius norm, K-FAC one Kronecker product among others; EKFAC fits the best diagonal in
# K-FAC's eigenbasis, K-FAC one such diagonal; two KPSVD terms beat one; the corrected K-FAC adds a
# term chosen to lower the residual. The margin covers the iterative solvers' tolerance.
ORDERINGS = (("KPSVD", "K-FAC"), ("EKFAC", "K-FAC"), ("Lanczos", "KPSVD"), ("KFAC-corrected", "K-FAC"))


def section(quick: bool) -> Section:
    """Fisher-approximation errors for one MLP layer, and matrix-free against dense timings."""
    sizes, n = ((12, 10, 6), 128) if quick else ((20, 16, 10), 256)
    a, g = mlp_layer_statistics(sizes, n, layer=1)
    errs = fisher_errors(a, g)
    op = FisherBlockOperator(a, g)
    tol = 1e-6
    pw = power_svd(op, v0=np.reshape(op.kfac().right[0], (-1,)), tol=tol)
    lz = lanczos_svd(op, 2, krylov_dim=10, tol=tol)
    names = list(errs)
    out = Section("kronecker", f"Fisher block of layer 2 of a {'-'.join(map(str, sizes))} MLP (d_a={a.shape[1]}, "
                               f"d_g={g.shape[1]}, N={n}), relative error |F - approx|_F / |F|_F:")
    out.line("  ".join(f"{k} {errs[k]:.3f}" for k in names[:4]))
    out.line("  ".join(f"{k} {errs[k]:.3f}" for k in names[4:]))
    out.line(f"to tol {tol:.0e}: power SVD {pw.iterations} steps, Lanczos (2 triplets) {lz.iterations} steps")
    for better, worse in ORDERINGS:
        out.check(f"error({better}) - error({worse})", errs[better] - errs[worse], 1e-6)

    # matrix-free KPSVD against the dense path (form F, SVD of its rearrangement)
    d = 16 if quick else 24
    rng = np.random.default_rng(1)
    a2 = rng.standard_normal((256, d))
    g2 = np.tanh(a2 @ rng.standard_normal((d, d)) / np.sqrt(d)) * (1.0 + a2[:, :1] ** 2)
    t_free, ks = best_time(lambda: kpsvd(a2, g2, tol=1e-8))
    t_dense, ref = best_time(lambda: nearest_kron(FisherBlockOperator(a2, g2).to_dense(), (d, d), (d, d)), 1,
                             warmup=False)
    big = FisherBlockOperator(a2, g2)
    e_free, e_dense = big.minus(ks).frobenius_norm(), big.minus(ref).frobenius_norm()
    out.line(f"d_a=d_g={d}, N=256: matrix-free kpsvd {1e3 * t_free:.1f} ms, dense SVD of R(F) ({d * d}x{d * d}) "
             f"{1e3 * t_dense:.0f} ms: {faster_or_slower(t_free, t_dense)}")
    out.check("matrix-free against dense KPSVD: relative difference of the errors", abs(e_free - e_dense) / e_dense,
              1e-8)

    # the two-term solve of Sec. 3.4 against a dense solve
    two = kpsvd(a, g, terms=2, method="lanczos", tol=1e-10)
    solver = KronSumInverse.from_kronsum(two, damping=1e-3)
    V = rng.standard_normal((g.shape[1], a.shape[1]))
    t_solve, X = best_time(lambda: solver.apply(V))
    s = np.sqrt(1e-3)
    L1 = two.left[0] + solver.pi * s * np.eye(g.shape[1])
    R1 = two.right[0] + s / solver.pi * np.eye(a.shape[1])
    M = np.kron(L1, R1) + np.kron(two.left[1], two.right[1])
    t_ref, Y = best_time(lambda: np.linalg.solve(M, V.reshape(-1)))
    out.line(f"(L1⊗R1 + L2⊗R2 + damping) solve {1e3 * t_solve:.2f} ms, numpy.linalg.solve of the "
             f"{M.shape[0]}x{M.shape[0]} matrix {1e3 * t_ref:.2f} ms: {faster_or_slower(t_solve, t_ref)}")
    out.check("Kronecker-sum solve against the dense solve: relative difference",
              np.linalg.norm(X.reshape(-1) - Y) / np.linalg.norm(Y), 1e-8)
    return out
