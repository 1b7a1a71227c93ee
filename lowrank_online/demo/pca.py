"""StreamingPCA against scikit-learn's IncrementalPCA, and a stream whose principal axis turns."""

from __future__ import annotations

import time

import numpy as np

from ..pca import StreamingPCA
from ._report import Section, faster_or_slower, progress


def section(quick: bool) -> Section:
    """The same stream into StreamingPCA and IncrementalPCA: agreement and time per batch; then
    a stream whose principal axis turns after 30 of 40 batches, with and without decay."""
    from sklearn.decomposition import IncrementalPCA

    d, k, n, steps = (2_000, 16, 64, 6) if quick else (5_000, 32, 128, 6)
    rng = np.random.default_rng(0)
    loadings = rng.standard_normal((24, d)) * (3.0 * 0.85 ** np.arange(24))[:, None]
    offset = 2.0 * rng.standard_normal(d)
    batches = [rng.standard_normal((n, 24)) @ loadings + rng.standard_normal((n, d)) + offset for _ in range(steps)]
    ours, ref = StreamingPCA(k), IncrementalPCA(k)
    t_ours, t_ref = [], []
    for B in progress(batches, "partial_fit"):
        t0 = time.perf_counter()
        ours.partial_fit(B)
        t1 = time.perf_counter()
        ref.partial_fit(B)
        t_ours.append(t1 - t0)
        t_ref.append(time.perf_counter() - t1)
    # best steady-state batch (the first fixes the components): robust on a shared machine
    t_ours, t_ref = min(t_ours[1:]), min(t_ref[1:])

    # a stream whose dominant direction changes: decay follows it, no decay averages
    e1, e2 = np.eye(50)[0], np.eye(50)[1]
    forget, keep = StreamingPCA(1, decay=0.8), StreamingPCA(1)
    for t in range(40):
        axis = e1 if t < 30 else e2
        B = rng.standard_normal((32, 1)) * 3.0 * axis + 0.3 * rng.standard_normal((32, 50))
        forget.partial_fit(B)
        keep.partial_fit(B)

    out = Section("pca", f"StreamingPCA against scikit-learn's IncrementalPCA: d={d:,}, {steps} batches of {n} rows, "
                         f"n_components={k}:")
    out.line(f"{1e3 * t_ours:.1f} ms per partial_fit, IncrementalPCA {1e3 * t_ref:.1f} ms (best batch): "
             f"{faster_or_slower(t_ours, t_ref)} (one Brand update instead of an SVD of the stacked batch)")
    out.check("components, max |difference|", np.abs(ours.components_ - ref.components_).max(), 1e-8)
    out.check("singular values, max relative difference",
              np.abs(ours.singular_values_ - ref.singular_values_).max() / ref.singular_values_[0], 1e-10)
    out.check("noise variance, relative difference", abs(ours.noise_variance_ / ref.noise_variance_ - 1), 1e-8)
    # the new axis carries 3^2 = 9 times the noise's variance per coordinate: decay=0.8 forgets the
    # old one within the 10 batches, an equal-weight mean of 30 + 10 batches keeps it
    out.check("axis turning e1 -> e2 after 30 of 40 batches, decay=0.8: |<component, e2>|",
              abs(forget.components_[0, 1]), 0.9, ">=")
    out.check("the same without decay (still on e1): |<component, e2>|", abs(keep.components_[0, 1]), 0.1)
    return out
