"""rsvd and reigh (block Krylov, the default) keep their relative accuracy at any representable
scale: the problem at 1e±150 (float64) and 1e±30 (float32) gives the unscaled problem's values
times the scale, to the dtype's rounding."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_online import reigh, rsvd

CASES = [("float64", s, 1e-12) for s in (1e-150, 1e150, 1e-300, 1e300)] + [
    ("float32", s, 1e-5) for s in (1e-30, 1e30, 1e-36, 1e36)
]


@pytest.mark.parametrize(("dtype", "scale", "rtol"), CASES)
def test_randomized_values_scale_with_the_problem(dtype, scale, rtol):
    rng = np.random.default_rng(0)
    B = rng.standard_normal((60, 20))
    sv = np.linalg.svd(B, compute_uv=False)[:3]
    # reigh's matrix is built at its scale directly (B B^T of the scaled B would square it)
    M = (B @ B.T) * scale
    res_e = reigh(M.astype(dtype), 3, seed=0)
    res_s = rsvd((B * scale).astype(dtype), 3, seed=0)
    np.testing.assert_allclose(np.asarray(res_e.eigenvalues, float) / scale, sv**2, rtol=rtol)
    np.testing.assert_allclose(np.asarray(res_s.S, float) / scale, sv, rtol=rtol)
    assert np.all(np.isfinite(np.asarray(res_e.eigenvectors))) and np.all(np.isfinite(np.asarray(res_s.U)))
