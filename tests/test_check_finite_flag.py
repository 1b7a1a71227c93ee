"""``check_finite`` is a flag: every public function and constructor that takes it refuses a
truthy non-bool (``"no"`` would otherwise switch the check on) before looking at anything else."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import lowrank_online as lo


def _takers():
    out = []
    for name in lo.__all__:
        obj = getattr(lo, name)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        if callable(fn) and "check_finite" in inspect.signature(fn).parameters:
            out.append(name)
    return out


def test_the_public_api_has_check_finite_takers():
    assert {"rsvd", "reigh", "eigh_update", "svd_update", "damped_solve", "kpsvd"} <= set(_takers())


@pytest.mark.parametrize("name", _takers())
@pytest.mark.parametrize("bad", ["no", 1, None, np.float64(1.0)])
def test_check_finite_must_be_a_bool(name, bad):
    obj = getattr(lo, name)
    params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
    required = [p for p in params.values()
                if p.name != "self" and p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = {p.name: None for p in params.values()
                if p.default is inspect.Parameter.empty and p.kind is p.KEYWORD_ONLY}
    with pytest.raises(TypeError, match="`check_finite` must be True or False"):
        obj(*[None] * len(required), check_finite=bad, **keywords)


def test_numpy_bools_are_flags():
    X = np.random.default_rng(0).standard_normal((20, 10))
    np.testing.assert_array_equal(lo.rsvd(X, 2, seed=0, check_finite=np.bool_(True)).S,
                                  lo.rsvd(X, 2, seed=0, check_finite=True).S)
