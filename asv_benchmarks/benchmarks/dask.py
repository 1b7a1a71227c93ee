"""Brand's update on Dask arrays: a LocalCluster of 2 worker processes, 1 thread each.

Sizes: d = 200,000, and 2,000,000 with LOWRANK_ASV_LARGE=1; r = n = 64, tall arrays in blocks of 50,000 rows.
``track_*`` report ratios measured in the same run (against svd_compressed on the concatenated
stream of 8 batches, and against one NumPy process) and the bookkeeping that must stay flat
over a stream (task records on the scheduler). Skipped when dask or distributed is missing.
"""

import importlib.util

from .common import LARGE, _measure, best_time  # common puts benchmarks/ (bench_dask.py) on sys.path

ROWS = 50_000
HAVE_DASK = importlib.util.find_spec("dask") is not None and importlib.util.find_spec("distributed") is not None


class DaskEighUpdate:
    params = [200_000, 2_000_000] if LARGE else [200_000]
    param_names = ["d"]
    timeout = 900
    number = 1
    repeat = 3

    def setup(self, d):
        if not HAVE_DASK:
            raise NotImplementedError("dask[array] and distributed are not installed")
        import bench_dask

        self._cluster = bench_dask.cluster()
        self.client = self._cluster.__enter__()
        self.L, self.Q, self.A = bench_dask.dask_problem(d, ROWS)

    def teardown(self, d):
        self._cluster.__exit__(None, None, None)

    def _update(self):
        from lowrank_online import eigh_update

        return eigh_update(self.L, self.Q, self.A, decay=0.95, weight=0.05)

    def time_eigh_update(self, d):
        self._update()

    def track_speedup_over_svd_compressed_8_batches(self, d):
        """svd_compressed (k = 64, 2 power iterations) on d x 512 over one streaming update."""
        import bench_dask

        t_update = best_time(self._update, 2)
        return bench_dask.time_svd_compressed(self.client, d, ROWS, 8, 1) / t_update

    track_speedup_over_svd_compressed_8_batches.unit = "ratio"

    def track_slowdown_against_numpy(self, d):
        """Dask update time over one NumPy process's (2 BLAS threads) at the same d."""
        import bench_dask

        t_update = best_time(self._update, 2)
        return t_update / bench_dask.time_numpy_update(d, 1)

    track_slowdown_against_numpy.unit = "ratio"

    def track_scheduler_records_after_20_updates(self, d):
        """Task records the scheduler holds after 20 chained updates: flat, not 20x."""
        from lowrank_online import eigh_update

        L, Q = self.L, self.Q
        for _ in range(20):
            L, Q = eigh_update(L, Q, self.A, decay=0.95, weight=0.05, rank=64)
        return self.client.run_on_scheduler(_measure.scheduler_tasks)

    track_scheduler_records_after_20_updates.unit = "tasks"
