"""StreamingPCA against scikit-learn's IncrementalPCA, one partial_fit on the same stream.

Sizes of issue 14: d = 2,000, 10,000 and 50,000 features, batches of 256 rows, n_components 64,
float64, with 1 and 2 BLAS threads. ``track_speedup`` is IncrementalPCA's time over
StreamingPCA's measured in the same run (best of 2 each); ``track_agreement`` the largest
difference of any component entry between the two after the timed batch. The printed table
with memory, the breakdown and the Dask figures is ``evidence/streaming_pca.py``.
"""

import importlib.util

import numpy as np

from lowrank_online import StreamingPCA

from .common import LARGE, best_time

HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None
K, N, LATENT = 64, 256, 40


def _stream(d, batches, seed=0):
    """Low-rank signal (40 latent directions, decaying) plus unit noise around an offset."""
    rng = np.random.default_rng([seed, d])
    loadings = rng.standard_normal((LATENT, d)) * (3.0 * 0.85 ** np.arange(LATENT))[:, None]
    offset = 2.0 * rng.standard_normal(d)
    return [rng.standard_normal((N, LATENT)) @ loadings + rng.standard_normal((N, d)) + offset for _ in range(batches)]


def _limits(threads):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


class PartialFit:
    # d = 50,000 (scikit-learn's stacked SVD takes seconds per batch) with LOWRANK_ASV_LARGE=1
    params = [[2_000, 10_000, 50_000] if LARGE else [2_000, 10_000], [1, 2]]
    param_names = ["d", "threads"]
    timeout = 900
    number = 1
    repeat = 3

    def setup(self, d, threads):
        if not HAVE_SKLEARN:
            raise NotImplementedError("scikit-learn is not installed")
        from sklearn.decomposition import IncrementalPCA

        *warm, self.batch = _stream(d, 3)
        self.ours, self.ref = StreamingPCA(K), IncrementalPCA(K)
        with _limits(threads):
            for B in warm:  # the steady state: k components held
                self.ours.partial_fit(B)
                self.ref.partial_fit(B)

    def time_streaming_pca(self, d, threads):
        with _limits(threads):
            self.ours.partial_fit(self.batch)

    def time_incremental_pca(self, d, threads):
        with _limits(threads):
            self.ref.partial_fit(self.batch)

    def peakmem_streaming_pca(self, d, threads):
        with _limits(threads):
            self.ours.partial_fit(self.batch)

    def peakmem_incremental_pca(self, d, threads):
        with _limits(threads):
            self.ref.partial_fit(self.batch)

    def track_speedup(self, d, threads):
        with _limits(threads):
            ours = best_time(lambda: self.ours.partial_fit(self.batch), 2)
            ref = best_time(lambda: self.ref.partial_fit(self.batch), 2)
        return ref / ours

    track_speedup.unit = "ratio"

    def track_agreement(self, d, threads):
        with _limits(threads):
            self.ours.partial_fit(self.batch)
            self.ref.partial_fit(self.batch)
        return float(np.max(np.abs(self.ours.components_ - self.ref.components_)))

    track_agreement.unit = "max |difference|"


class Decay:
    """The forgetting tracker in steady state (same cost as decay=None)."""

    params = [10_000]
    param_names = ["d"]
    timeout = 300

    def setup(self, d):
        *warm, self.batch = _stream(d, 3, seed=1)
        self.est = StreamingPCA(K, decay=0.95)
        for B in warm:
            self.est.partial_fit(B)

    def time_partial_fit(self, d):
        self.est.partial_fit(self.batch)
