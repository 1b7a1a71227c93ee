"""Scale invariance: the kernels give the same relative accuracy at any representable scale.

Each test scales a problem's inputs by powers of ten drawn by hypothesis, up to 1e+-150 in
float64 and 1e+-30 in float32 wherever the result is representable (the constraint is
stated per kernel), and compares the result, scaled back, with a float64 NumPy reference of
the unscaled problem, to the tolerance of the unscaled tests. The reference is built from
the values the backend sees (the scaled inputs rounded to its dtype, divided by the scale in
float64).
"""

from __future__ import annotations

import warnings

import numpy as np
from _helpers import RTOL, asarray, assert_matrix_close, assert_orthonormal, increment_block, random_basis, to_np
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank_online import (
    KronSumInverse,
    damped_solve,
    eigh_update,
    ekfac_factors,
    ekfac_update,
    kfac_corrected,
    kfac_factors,
    kpsvd,
    lanczos_svd,
    nearest_kron,
    power_svd,
    svd_update,
    tkfac_factors,
)

# Largest |log10 scale| of an input array, and of a result, per dtype.
INPUT = {"float64": 150, "float32": 30}
OUTPUT = {"float64": 300, "float32": 36}
STRUCTURES = ["generic", "duplicate", "in_span", "zero"]
FEW = settings(max_examples=int(__import__("os").environ.get("SCALE_EXAMPLES", 12)))


def _exponent(data, low, high, label):
    return data.draw(st.floats(low, high, allow_nan=False), label=label)


def _seen(a, scale, dtype_name):
    """The unscaled values the backend works on: ``a * scale`` rounded to the dtype, / scale."""
    return np.asarray(np.asarray(a) * scale, dtype=np.dtype(dtype_name)).astype(np.float64) / scale


def _pair(data, dtype_name, output_power):
    """Exponents ``(ea, eb)`` of two inputs, each within INPUT, whose result scales as
    ``10^(output_power (ea + eb))`` within OUTPUT."""
    lim = INPUT[dtype_name]
    ea = _exponent(data, -lim, lim, "ea")
    span = OUTPUT[dtype_name] / output_power
    eb = _exponent(data, max(-lim, -span - ea), min(lim, span - ea), "eb")
    return ea, eb


@FEW
@given(data=st.data())
def test_svd_update_keeps_its_accuracy_at_any_scale(xp, dtype_name, data):
    """``U S Vh + A B^T`` with S scaled by s, A by s^alpha, B by s^(1-alpha); and the O(1)
    problem with A scaled by t, B by 1/t (the case where the Gram matrices of both
    complements are out of range in opposite directions)."""
    lim = INPUT[dtype_name]
    e = _exponent(data, -lim, lim, "log10 s")
    balanced = data.draw(st.booleans(), label="balanced")
    alpha = data.draw(st.floats(0.0, 1.0), label="alpha")
    es, ea, eb = (0.0, e, -e) if balanced else (e, alpha * e, (1 - alpha) * e)
    structure = data.draw(st.sampled_from(STRUCTURES), label="structure")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    m, d, r, n = 30, 25, 4, 3
    U, V = random_basis(rng, m, r), random_basis(rng, d, r)
    S = np.sort(rng.gamma(2.0, size=r))[::-1]
    A, B = increment_block(rng, U, n, structure), increment_block(rng, V, n, structure)
    s, sa, sb = 10.0**es, 10.0**ea, 10.0**eb

    res = svd_update(asarray(xp, U, dtype_name), asarray(xp, S * s, dtype_name), asarray(xp, V.T, dtype_name),
                     asarray(xp, A * sa, dtype_name), asarray(xp, B * sb, dtype_name))

    Uc, Vc = (np.asarray(x, dtype=np.dtype(dtype_name)).astype(float) for x in (U, V))
    ref = (Uc * _seen(S, s, dtype_name)) @ Vc.T + _seen(A, sa, dtype_name) @ _seen(B, sb, dtype_name).T
    got = (to_np(res.U) * (to_np(res.S) / s)) @ to_np(res.Vh)
    assert_matrix_close(got, ref, dtype_name, factor=10)
    assert_orthonormal(res.U, dtype_name)
    assert_orthonormal(to_np(res.Vh).T, dtype_name)


@FEW
@given(data=st.data())
def test_eigh_update_keeps_its_accuracy_at_any_scale(xp, dtype_name, data):
    """``rho Q L Q^T + w A A^T`` with A scaled by t and L by t^2, through Brand's complement
    (n = 3) and through A A^T (n = 40, the wide route)."""
    lim = OUTPUT[dtype_name] / 2
    t = 10.0 ** _exponent(data, -lim, lim, "log10 t")
    n = data.draw(st.sampled_from([3, 40]), label="n")
    structure = data.draw(st.sampled_from(STRUCTURES), label="structure")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    d, r = 40, 4
    Q = random_basis(rng, d, r)
    L = np.sort(rng.gamma(2.0, size=r))[::-1]
    A = increment_block(rng, Q, n, structure)

    res = eigh_update(asarray(xp, L * t * t, dtype_name), asarray(xp, Q, dtype_name), asarray(xp, A * t, dtype_name),
                      decay=0.9, weight=0.1)

    Qc = np.asarray(Q, dtype=np.dtype(dtype_name)).astype(float)
    Ac = _seen(A, t, dtype_name)
    ref = 0.9 * (Qc * _seen(L, t * t, dtype_name)) @ Qc.T + 0.1 * Ac @ Ac.T
    lam, W = to_np(res.eigenvalues) / (t * t), to_np(res.eigenvectors)
    assert_matrix_close((W * lam) @ W.T, ref, dtype_name, factor=10)
    assert_orthonormal(W, dtype_name)


@FEW
@given(data=st.data())
def test_damped_solve_keeps_its_accuracy_at_any_scale(xp, dtype_name, data):
    """Spectrum and damping scaled by s, the right-hand side by u: the solution is u/s times
    the unscaled one (s, u within INPUT, u/s within OUTPUT)."""
    es, eu = _pair(data, dtype_name, 1)
    eu = es + eu if abs(es + eu) <= INPUT[dtype_name] else eu  # u/s: the result's scale is eu - es
    s, u = 10.0**es, 10.0**eu
    continuation = data.draw(st.booleans(), label="continuation")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    d, r = 30, 5
    Q = random_basis(rng, d, r)
    L = np.sort(rng.gamma(2.0, size=r))[::-1]
    X = rng.standard_normal((d, 2))

    got = damped_solve(asarray(xp, L * s, dtype_name), asarray(xp, Q, dtype_name), asarray(xp, X * u, dtype_name),
                       0.3 * s, continuation=continuation)

    Qc = np.asarray(Q, dtype=np.dtype(dtype_name)).astype(float)
    Lc = _seen(L, s, dtype_name)
    lam = 0.3 + (Lc.min() if continuation else 0.0)
    Lc = Lc - Lc.min() if continuation else Lc
    M = (Qc * Lc) @ Qc.T + lam * np.eye(d)
    assert_matrix_close(to_np(got) * (s / u), np.linalg.solve(M, _seen(X, u, dtype_name)), dtype_name, factor=10)


def _statistics(data, dtype_name, output_power, n=12, d_a=4, d_g=3):
    """Per-sample statistics scaled by ta and tg with the result ~ (ta tg)^output_power."""
    ea, eg = _pair(data, dtype_name, output_power)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    a = rng.standard_normal((n, d_a)) * 0.8 ** np.arange(d_a)
    g = rng.standard_normal((n, d_g))
    ta, tg = 10.0**ea, 10.0**eg
    return a, g, ta, tg


@FEW
@given(data=st.data())
def test_tkfac_factors_keep_their_accuracy_at_any_scale(xp, dtype_name, data):
    """Phi and Psi are scale-free, delta = E[|a|^2 |g|^2] scales as (ta tg)^2."""
    a, g, ta, tg = _statistics(data, dtype_name, 2)
    f = tkfac_factors(asarray(xp, a * ta, dtype_name), asarray(xp, g * tg, dtype_name))
    ac, gc = _seen(a, ta, dtype_name), _seen(g, tg, dtype_name)
    w = (ac * ac).sum(1) * (gc * gc).sum(1)
    np.testing.assert_allclose(float(f.delta) / (ta * tg) ** 2, w.mean(), rtol=10 * RTOL[dtype_name])
    assert_matrix_close(to_np(f.Phi), ac.T @ ((gc * gc).sum(1)[:, None] * ac) / w.sum(), dtype_name, factor=10)
    assert_matrix_close(to_np(f.Psi), gc.T @ ((ac * ac).sum(1)[:, None] * gc) / w.sum(), dtype_name, factor=10)


def _fisher(a, g):
    J = (g[:, :, None] * a[:, None, :]).reshape(a.shape[0], -1)
    return J.T @ J / a.shape[0]


@FEW
@given(data=st.data())
def test_kronecker_sum_approximations_keep_their_accuracy_at_any_scale(xp, dtype_name, data):
    """kpsvd (power and Lanczos) and EKFAC against their unscaled results: F scales as
    (ta tg)^2; the K-FAC factors alone need ta^2 and tg^2 in range (kfac_factors and
    kfac_corrected, checked where they are)."""
    a, g, ta, tg = _statistics(data, dtype_name, 2)
    method = data.draw(st.sampled_from(["power", "lanczos", "ekfac", "kfac"]), label="method")
    A, G = asarray(xp, a * ta, dtype_name), asarray(xp, g * tg, dtype_name)
    ac, gc = _seen(a, ta, dtype_name), _seen(g, tg, dtype_name)
    F = (ta * tg) ** 2
    tol = 1e-10 if dtype_name == "float64" else 1e-5
    if method == "power":
        got, want = kpsvd(A, G, tol=tol).to_dense(), kpsvd(ac, gc, tol=1e-12).to_dense()
    elif method == "lanczos":
        got, want = (
            kpsvd(A, G, terms=2, method="lanczos", tol=tol).to_dense(),
            kpsvd(ac, gc, terms=2, method="lanczos", tol=1e-12).to_dense(),
        )
    elif method == "ekfac":
        got, want = ekfac_factors(A, G).to_dense(), ekfac_factors(ac, gc).to_dense()
    else:
        if max(ta, tg, 1 / ta, 1 / tg) ** 2 > 10.0 ** OUTPUT[dtype_name]:
            return  # E[a a^T] or E[g g^T] alone is beyond the dtype (refused, see below)
        got, want = kfac_corrected(A, G, tol=tol).to_dense(), kfac_corrected(ac, gc, tol=1e-12).to_dense()
        assert_matrix_close(to_np(kfac_factors(A, G).to_dense()) / F, np.kron(gc.T @ gc, ac.T @ ac) / 144,
                            dtype_name, factor=10)
    assert_matrix_close(to_np(got) / F, to_np(want), dtype_name, factor=100 if method != "ekfac" else 10)


def test_kfac_factors_that_overflow_the_dtype_are_refused():
    a = np.ones((4, 3), dtype=np.float32) * np.float32(1e20)
    g = np.ones((4, 2), dtype=np.float32) * np.float32(1e-20)
    for fn in (kfac_factors, kfac_corrected):
        with np.testing.assert_raises_regex(ValueError, r"E\[a a\^T\] overflows float32; rescale `a`"):
            fn(a, g)
    tkfac_factors(a, g)  # F itself is O(1): TKFAC and KPSVD hold it
    kpsvd(a, g)


@FEW
@given(data=st.data())
def test_ekfac_update_keeps_its_accuracy_at_any_scale(xp, dtype_name, data):
    a, g, ta, tg = _statistics(data, dtype_name, 2)
    per_sample = data.draw(st.booleans(), label="per_sample")
    basis = ekfac_factors(a, g)
    bg, ba = asarray(xp, basis.basis_g, dtype_name), asarray(xp, basis.basis_a, dtype_name)
    got = ekfac_update(None, asarray(xp, a * ta, dtype_name), asarray(xp, g * tg, dtype_name), bg, ba,
                       per_sample=per_sample)
    want = ekfac_update(None, _seen(a, ta, dtype_name), _seen(g, tg, dtype_name), to_np(bg), to_np(ba),
                        per_sample=per_sample)
    assert_matrix_close(to_np(got) / (ta * tg) ** 2, want, dtype_name, factor=10)


@FEW
@given(data=st.data())
def test_kron_sum_inverse_keeps_its_accuracy_at_any_scale(xp, dtype_name, data):
    """``(A ⊗ B + C ⊗ D)`` with A, C scaled by s and B, D by u: the solution scales as 1/(s u)."""
    es, eu = _pair(data, dtype_name, 1)
    s, u = 10.0**es, 10.0**eu
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    p, q = 4, 3
    X, Y = rng.standard_normal((p, p + 2)), rng.standard_normal((q, q + 2))
    A, B = X @ X.T / p, Y @ Y.T / q
    C = rng.standard_normal((p, p))
    C = (C + C.T) / 8
    D = np.diag(rng.uniform(-0.5, 0.5, q))
    V = rng.standard_normal((p, q))
    solver = KronSumInverse(*(asarray(xp, M * f, dtype_name) for M, f in ((A, s), (B, u), (C, s), (D, u))))
    got = to_np(solver.apply(asarray(xp, V, dtype_name))) * (s * u)
    Ac, Bc, Cc, Dc = (_seen(M, f, dtype_name) for M, f in ((A, s), (B, u), (C, s), (D, u)))
    want = np.linalg.solve(
        np.kron(Ac, Bc) + np.kron(Cc, Dc), np.asarray(V, dtype=np.dtype(dtype_name)).astype(float).reshape(-1)
    )
    cond = np.linalg.cond(np.kron(Ac, Bc) + np.kron(Cc, Dc))
    assert_matrix_close(got.reshape(-1), want, dtype_name, factor=10 * cond)


@FEW
@given(data=st.data())
def test_dense_and_iterative_svds_keep_their_accuracy_at_any_scale(xp, dtype_name, data):
    """nearest_kron (dense SVD of the rearrangement), power_svd and lanczos_svd: the
    singular values scale with the matrix (up to the largest representable one)."""
    lim = INPUT[dtype_name]
    s = 10.0 ** _exponent(data, -lim, lim, "log10 s")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    M = rng.standard_normal((12, 10)) * 0.7 ** np.arange(10)
    Mc = _seen(M, s, dtype_name)
    X = asarray(xp, M * s, dtype_name)
    ref = np.linalg.svd(Mc, compute_uv=False)
    tol = 1e-10 if dtype_name == "float64" else 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a non-converged power SVD is fine here
        top = float(power_svd(X, tol=tol, max_iter=5000).S[0]) / s
    np.testing.assert_allclose(top, ref[0], rtol=100 * RTOL[dtype_name])
    got = to_np(lanczos_svd(X, 3, krylov_dim=8, tol=tol).S) / s
    np.testing.assert_allclose(got, ref[:3], rtol=100 * RTOL[dtype_name])
    kron = nearest_kron(X, (3, 2), (4, 5), terms=2)
    assert_matrix_close(to_np(kron.to_dense()) / s, nearest_kron(Mc, (3, 2), (4, 5), terms=2).to_dense(), dtype_name,
                        factor=10)
