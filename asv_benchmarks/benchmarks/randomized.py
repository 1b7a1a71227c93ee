"""rsvd / reigh / dense eigh at sizes that finish in seconds, and ratios to the peers."""

import numpy as np

from lowrank_online import reigh, rsvd

from .common import RANK, best_time, psd_matrix


class Randomized:
    params = [1024, 2048, 4096]
    param_names = ["d"]
    timeout = 600

    def setup(self, d):
        self.X = psd_matrix(d)

    def time_rsvd(self, d):
        rsvd(self.X, RANK, seed=0)

    def time_reigh(self, d):
        reigh(self.X, RANK, seed=0)

    def peakmem_reigh(self, d):
        reigh(self.X, RANK, seed=0)


class DenseEigh:
    """The cubic baseline: numpy.linalg.eigh of the explicit matrix."""

    params = [1024, 2048, 4096]
    param_names = ["d"]
    timeout = 600

    def setup(self, d):
        self.X = psd_matrix(d)

    def time_numpy_eigh(self, d):
        np.linalg.eigh(self.X)


class PeerRatios:
    """Speed-ups against the peer a user would otherwise pick, measured in the same run."""

    params = [2048]
    param_names = ["d"]
    timeout = 600

    def setup(self, d):
        self.X = psd_matrix(d)
        try:
            from sklearn.utils.extmath import randomized_svd
        except ImportError as err:  # asv skips a benchmark whose setup raises NotImplementedError
            raise NotImplementedError("scikit-learn is not installed") from err
        self.peer = lambda: randomized_svd(self.X, RANK, random_state=0)

    def track_reigh_speedup_vs_sklearn_randomized_svd(self, d):
        return best_time(self.peer) / best_time(lambda: reigh(self.X, RANK, seed=0))

    def track_rsvd_speedup_vs_sklearn_randomized_svd(self, d):
        return best_time(self.peer) / best_time(lambda: rsvd(self.X, RANK, seed=0))

    track_reigh_speedup_vs_sklearn_randomized_svd.unit = "ratio"
    track_rsvd_speedup_vs_sklearn_randomized_svd.unit = "ratio"
