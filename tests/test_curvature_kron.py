"""Preconditioner methods built on the Kronecker toolkit, against dense references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import asarray, to_np

from lowrank_online import load_state, nearest_kron, save_state
from lowrank_online.curvature import METHODS, KFACPreconditioner

KRON_METHODS = ["ekfac", "ekfac-ra", "tkfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"]


def _batches(rng, n, N=30, d_a=7, d_g=5):
    Ba = rng.standard_normal((d_a, d_a)) * 0.8 ** np.arange(d_a)
    Bg = rng.standard_normal((d_g, d_g)) * 0.8 ** np.arange(d_g)
    return [(rng.standard_normal((N, d_a)) @ Ba.T, rng.standard_normal((N, d_g)) @ Bg.T) for _ in range(n)]


def _fisher(a, g):
    return sum(np.kron(np.outer(gt, gt), np.outer(at, at)) for at, gt in zip(a, g, strict=True)) / a.shape[0]


def _feed(pre, batches, xp=None):
    for a, g in batches:
        pre.update("fc", a if xp is None else asarray(xp, a), g if xp is None else asarray(xp, g))
        pre.step()


def _solve(M, grad):
    return np.linalg.solve(M, grad.reshape(-1)).reshape(grad.shape)


def test_every_method_is_registered():
    assert set(KRON_METHODS) <= set(METHODS)


def test_tkfac_matches_dense_trace_restricted_factors(xp):
    rng = np.random.default_rng(0)
    batches = _batches(rng, 3)
    pre = KFACPreconditioner("tkfac", decay=0.8, damping=0.05, T_inv=1)
    _feed(pre, batches, xp)
    delta = Phi = Psi = None
    for a, g in batches:  # eq. (4.9) per batch, EA'd piece by piece
        d = np.mean(np.sum(a * a, 1) * np.sum(g * g, 1))
        ph = (a.T * np.sum(g * g, 1)) @ a / len(a) / d
        ps = (g.T * np.sum(a * a, 1)) @ g / len(a) / d
        delta, Phi, Psi = (
            (d, ph, ps) if delta is None else (0.8 * delta + 0.2 * d, 0.8 * Phi + 0.2 * ph, 0.8 * Psi + 0.2 * ps)
        )
    left, right = math.sqrt(delta) * Psi, math.sqrt(delta) * Phi
    lam_l, lam_r = 0.05 * np.linalg.eigvalsh(left)[-1], 0.05 * np.linalg.eigvalsh(right)[-1]
    grad = rng.standard_normal((5, 7))
    ref = _solve(np.kron(left + lam_l * np.eye(5), right + lam_r * np.eye(7)), grad)
    np.testing.assert_allclose(to_np(pre.precondition("fc", asarray(xp, grad))), ref, rtol=1e-9, atol=1e-12)


def test_kpsvd_uses_the_nearest_kronecker_product():
    rng = np.random.default_rng(1)
    (a, g), = _batches(rng, 1)
    pre = KFACPreconditioner("kpsvd", damping=0.05, T_inv=1, kron_tol=1e-9, kron_max_iter=1000)
    _feed(pre, [(a, g)])
    ks = nearest_kron(_fisher(a, g), (5, 5), (7, 7))
    L, R = ks.left[0], ks.right[0]
    if np.trace(L) < 0:
        L, R = -L, -R
    held = pre.layer_state("fc").state
    # same product (the balanced scaling may differ by a constant exchanged between factors)
    np.testing.assert_allclose(np.kron(held.left, held.right), np.kron(L, R), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["deflation", "lanczos", "kfac-corrected"])
def test_two_term_methods_solve_the_damped_sum_exactly(method):
    rng = np.random.default_rng(2)
    batches = _batches(rng, 3)
    pre = KFACPreconditioner(method, damping=0.05, T_inv=1)
    _feed(pre, batches)
    L0, R0, L1, R1 = pre.layer_state("fc").state.frozen
    ml, mr = np.linalg.eigvalsh(L0)[-1], np.linalg.eigvalsh(R0)[-1]
    M = np.kron(L0 + 0.05 * ml * np.eye(5), R0 + 0.05 * mr * np.eye(7)) + np.kron(L1, R1)
    grad = rng.standard_normal((5, 7))
    np.testing.assert_allclose(pre.precondition("fc", grad), _solve(M, grad), rtol=1e-9, atol=1e-12)
    # the EA'd sum is close to the Fisher blocks it averages
    F = _fisher(*batches[-1])
    assert np.linalg.norm(np.kron(L0, R0) + np.kron(L1, R1) - F) < np.linalg.norm(F)


@pytest.mark.parametrize("method", ["deflation", "lanczos", "kfac-corrected", "kpsvd"])
def test_feeding_the_same_batch_twice_keeps_the_factors(method):
    # An EA of identical terms must not change them: signs are aligned before averaging.
    rng = np.random.default_rng(3)
    (a, g), = _batches(rng, 1)
    pre = KFACPreconditioner(method, T_inv=1, kron_tol=1e-9, kron_max_iter=1000)

    def products():
        st = pre.layer_state("fc").state
        pairs = (
            [(st.left, st.right)]
            if method == "kpsvd"
            else [(st.average.L0, st.average.R0), (st.average.L1, st.average.R1)]
        )
        return [np.kron(left, right) for left, right in pairs]

    _feed(pre, [(a, g)])
    first = products()
    _feed(pre, [(a, g)])
    for before, after in zip(first, products(), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-8 * np.abs(before).max())


@pytest.mark.parametrize("method", ["ekfac", "ekfac-ra"])
def test_ekfac_solves_in_the_kronecker_eigenbasis(method):
    rng = np.random.default_rng(4)
    batches = _batches(rng, 3)
    pre = KFACPreconditioner(method, decay=0.9, damping=0.1, T_inv=100)  # basis fixed after the first batch
    _feed(pre, batches)
    layer = pre.layer_state("fc").state
    QA, QG = layer.A.eigenvectors, layer.G.eigenvectors
    S = None
    for a, g in batches:
        if method == "ekfac":
            batch = ((g @ QG) ** 2).T @ ((a @ QA) ** 2) / len(a)
        else:
            # the squared mini-batch mean gradient, times N: an unbiased estimate of the
            # per-sample second moments for centred gradients (families/ekfac.py)
            batch = len(a) * (QG.T @ (g.T @ a / len(a)) @ QA) ** 2
        S = batch if S is None else 0.9 * S + 0.1 * batch
    np.testing.assert_allclose(layer.scalings, S, rtol=1e-10)
    grad = rng.standard_normal((5, 7))
    lam = 0.1 * S.max()
    Q = np.kron(QG, QA)
    ref = Q @ ((Q.T @ grad.reshape(-1)) / (S.reshape(-1) + lam))
    np.testing.assert_allclose(pre.precondition("fc", grad), ref.reshape(5, 7), rtol=1e-10)


def test_ekfac_fisher_error_never_exceeds_kfac():
    rng = np.random.default_rng(5)
    (a, g), = _batches(rng, 1, N=60)
    F = _fisher(a, g)
    pre = KFACPreconditioner("ekfac", T_inv=1)
    _feed(pre, [(a, g)])
    layer = pre.layer_state("fc").state
    Q = np.kron(layer.G.eigenvectors, layer.A.eigenvectors)
    ekfac = Q @ np.diag(layer.scalings.reshape(-1)) @ Q.T
    kfac = np.kron(g.T @ g / len(g), a.T @ a / len(a))
    assert np.linalg.norm(F - ekfac) <= np.linalg.norm(F - kfac) * (1 + 1e-12)


@pytest.mark.parametrize("method", ["tkfac", "kpsvd"])
def test_two_factor_methods_support_the_linear_time_application(method):
    rng = np.random.default_rng(6)
    pre = KFACPreconditioner(method)
    _feed(pre, _batches(rng, 2))
    G, A = rng.standard_normal((30, 5)) / 30, rng.standard_normal((30, 7))
    Gt, At = pre.precondition_factored("fc", G, A)
    assert Gt.shape == (30, 5) and At.shape == (30, 7)
    np.testing.assert_allclose(Gt.T @ At, pre.precondition("fc", G.T @ A), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", KRON_METHODS)
def test_kron_methods_resume_bit_exactly(tmp_path, method):
    rng = np.random.default_rng(7)
    batches = _batches(rng, 6)
    one = KFACPreconditioner(method, T_inv=2, seed=3)
    _feed(one, batches[:3])
    save_state(tmp_path / "p.npz", one.state_dict())
    two = KFACPreconditioner(method, T_inv=2, seed=3)
    two.load_state_dict(load_state(tmp_path / "p.npz"))
    grad = rng.standard_normal((5, 7))
    for a, g in batches[3:]:
        for p in (one, two):
            p.update("fc", a, g)
            p.step()
        np.testing.assert_array_equal(two.precondition("fc", grad), one.precondition("fc", grad))


@pytest.mark.parametrize("method", KRON_METHODS)
def test_kron_methods_run_on_every_backend(xp, method):
    rng = np.random.default_rng(8)
    pre = KFACPreconditioner(method, T_inv=1)
    _feed(pre, _batches(rng, 2), xp)
    grad = asarray(xp, rng.standard_normal((5, 7)))
    ref = KFACPreconditioner(method, T_inv=1)
    _feed(ref, _batches(np.random.default_rng(8), 2))
    np.testing.assert_allclose(
        to_np(pre.precondition("fc", grad)), ref.precondition("fc", to_np(grad)), rtol=1e-6, atol=1e-9
    )
