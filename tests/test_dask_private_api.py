"""The undocumented parts of distributed that the Dask detach step relies on (see
``lowrank_online._dask.PRIVATE_API``): this test fails loudly when an upgrade removes one, and
the library then keeps the lineage with a warning instead of leaking keys."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")

import dask.array as da  # noqa: E402

from lowrank_online import _dask, eigh_update  # noqa: E402


def test_the_installed_distributed_has_every_private_api_the_detach_step_uses(client):
    assert _dask.private_api_missing(client) == []


def test_without_them_the_results_keep_their_lineage_and_say_so(client, monkeypatch):
    monkeypatch.setattr(_dask, "private_api_missing", lambda c: [_dask.PRIVATE_API[1]])
    monkeypatch.setattr(_dask, "_private_checked", {})
    rng = np.random.default_rng(3)
    A = rng.standard_normal((200, 3))
    ref = eigh_update(np.zeros(0), np.zeros((200, 0)), A)
    with pytest.warns(RuntimeWarning, match="client-desires-keys"):
        res = eigh_update(da.zeros(0, chunks=-1), da.zeros((200, 0), chunks=(100, -1)),
                          da.from_array(A, chunks=(100, -1)))
    np.testing.assert_allclose(res.eigenvalues.compute(), ref.eigenvalues, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per client
        eigh_update(res.eigenvalues, res.eigenvectors, da.from_array(A, chunks=(100, -1)))
