"""The Kronecker toolkit's section of the library's main demo (``report()``)."""

from __future__ import annotations

import numpy as np

from .._timing import timed
from .ekfac import ekfac_factors
from .fisher import FisherBlockOperator
from .kpsvd import kfac_corrected, kfac_factors, kpsvd
from .kronsum import KronSumInverse
from .lanczos import lanczos_svd, power_svd
from .rearrange import nearest_kron
from .tkfac import tkfac_factors

__all__ = ["report"]


def mlp_layer_statistics(sizes: tuple[int, ...], n: int, layer: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``(a, g)`` of one layer of a random tanh/softmax MLP, targets sampled from the
    model (Monte-Carlo Fisher): inputs with a bias column, pre-activation gradients."""
    rng = np.random.default_rng(seed)
    Ws = [rng.standard_normal((o, i + 1)) / np.sqrt(i + 1) for i, o in zip(sizes[:-1], sizes[1:])]
    h = rng.standard_normal((n, sizes[0]))
    inputs = []
    for k, W in enumerate(Ws):
        inputs.append(np.concatenate([h, np.ones((n, 1))], axis=1))
        s = inputs[-1] @ W.T
        h = np.tanh(s) if k < len(Ws) - 1 else s
    p = np.exp(h - h.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.minimum((p.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1), p.shape[1] - 1)
    g = p.copy()
    g[np.arange(n), y] -= 1.0
    for k in range(len(Ws) - 1, layer, -1):
        t = inputs[k][:, :-1]
        g = (g @ Ws[k][:, :-1]) * (1.0 - t * t)
    return inputs[layer], g


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


def report(quick: bool = False) -> str:
    """Fisher-approximation errors for one MLP layer, and matrix-free against dense timings."""
    sizes, n = ((12, 10, 6), 128) if quick else ((20, 16, 10), 256)
    a, g = mlp_layer_statistics(sizes, n, layer=1)
    errs = fisher_errors(a, g)
    op = FisherBlockOperator(a, g)
    pw = power_svd(op, v0=np.reshape(op.kfac().right[0], (-1,)), tol=1e-6)
    lz = lanczos_svd(op, 2, krylov_dim=10, tol=1e-6)
    names = list(errs)
    lines = [
        f"Fisher block of layer 2 of a {'-'.join(map(str, sizes))} MLP (d_a={a.shape[1]}, d_g={g.shape[1]}, "
        f"N={n}), relative error |F - approx|_F / |F|_F:",
        "  " + "  ".join(f"{k} {errs[k]:.3f}" for k in names[:4]),
        "  " + "  ".join(f"{k} {errs[k]:.3f}" for k in names[4:]),
        f"  to tol 1e-6: power SVD {pw.iterations} steps, Lanczos (2 triplets) {lz.iterations} steps",
    ]
    # matrix-free KPSVD against the dense path (form F, SVD of its rearrangement)
    d = 16 if quick else 32
    rng = np.random.default_rng(1)
    a2 = rng.standard_normal((256, d))
    g2 = np.tanh(a2 @ rng.standard_normal((d, d)) / np.sqrt(d)) * (1.0 + a2[:, :1] ** 2)
    t_free, ks = timed(lambda: kpsvd(a2, g2, tol=1e-8))
    t_dense, ref = timed(lambda: nearest_kron(FisherBlockOperator(a2, g2).to_dense(), (d, d), (d, d)), 1, warmup=False)
    big = FisherBlockOperator(a2, g2)
    e_free, e_dense = big.minus(ks).frobenius_norm(), big.minus(ref).frobenius_norm()
    lines.append(
        f"  d_a=d_g={d}, N=256: matrix-free kpsvd {1e3 * t_free:.1f} ms vs dense SVD of R(F) "
        f"({d * d}x{d * d}) {1e3 * t_dense:.0f} ms ({t_dense / t_free:.0f}x), errors differ by "
        f"{abs(e_free - e_dense) / e_dense:.0e}"
    )
    # the two-term solve of Sec. 3.4 against a dense solve
    two = kpsvd(a, g, terms=2, method="lanczos", tol=1e-10)
    solver = KronSumInverse.from_kronsum(two, damping=1e-3)
    V = rng.standard_normal((g.shape[1], a.shape[1]))
    t_solve, X = timed(lambda: solver.apply(V))
    s = np.sqrt(1e-3)
    L1 = two.left[0] + solver.pi * s * np.eye(g.shape[1])
    R1 = two.right[0] + s / solver.pi * np.eye(a.shape[1])
    M = np.kron(L1, R1) + np.kron(two.left[1], two.right[1])
    t_ref, Y = timed(lambda: np.linalg.solve(M, V.reshape(-1)))
    lines.append(
        f"  (L1⊗R1 + L2⊗R2 + damping) solve: {1e3 * t_solve:.2f} ms vs numpy.linalg.solve {1e3 * t_ref:.1f} ms, "
        f"relative difference {np.linalg.norm(X.reshape(-1) - Y) / np.linalg.norm(Y):.0e}"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(report())
