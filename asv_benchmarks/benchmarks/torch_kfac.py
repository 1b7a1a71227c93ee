"""lowrank_online.torch.KFAC on an MLP 784-W-W-10, batch 256, float32 (issue 12).

``time_sgd_step`` is the unit. ``time_statistics_step`` is a step that captures statistics and
updates the curvature (forward, the Monte-Carlo pass, backward, ``kfac.step()`` with the inverse
work of that method), ``time_plain_step`` a step that only applies the preconditioner.
``track_amortised_ratio`` is the default schedule's amortised step over the SGD step
(``T_updt = 10``: 1 statistics step, 9 plain steps; kfac and rkfac's inverse every 100 steps
is counted at 1/10 of a statistics step's inverse work, which ``time_statistics_step`` includes
in full). ``track_module_overhead`` is KFAC's own work per plain step (hooks, reshapes, casts,
checks, writing ``.grad``) as a fraction of the SGD step.
"""

import warnings

try:
    import torch
    from torch import nn

    from lowrank_online.torch import KFAC
except ImportError:  # pragma: no cover - the suite runs without torch
    torch = None

from .common import LARGE, best_time

BATCH = 256


def _mlp(width):
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


class TorchKFACStep:
    # W = 4096 (kfac's eigh of a 4097-wide factor takes minutes) with LOWRANK_ASV_LARGE=1
    params = (["kfac", "rkfac", "bkfac"], [1024, 4096] if LARGE else [1024])
    param_names = ["method", "width"]
    timeout = 900

    def setup(self, method, width):
        if torch is None:
            raise NotImplementedError("torch is not installed")
        if method == "kfac" and width > 1024:
            raise NotImplementedError("kfac's dense eigh at W=4096 takes minutes per call on 2 cores")
        torch.manual_seed(0)
        self.model = _mlp(width)
        # Fresh batches in rotation: one batch fed twice would send the B-update down its
        # rank-revealing path (new columns in the held span), which training never takes.
        self.batches = [(torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))) for _ in range(8)]
        self.count = 0
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        # The head's gradient factor (d = 10 << N = 256) would take the slow wide-batch B-update.
        layer_methods = {"4": "auto"} if method == "bkfac" else None
        self.stats = KFAC(self.model, method, T_updt=1, T_inv=1, layer_methods=layer_methods)
        self._step(self.stats)

    def teardown(self, method, width):
        if torch is not None and hasattr(self, "stats"):
            self.stats.remove()

    def _fb(self):
        x, y = self.batches[self.count % len(self.batches)]
        self.count += 1
        self.model.zero_grad()
        nn.functional.cross_entropy(self.model(x), y).backward()

    def _step(self, kfac=None):
        self._fb()
        if kfac is not None:
            kfac.step()
        self.opt.step()

    def time_sgd_step(self, method, width):
        with self.stats.paused():
            self._step()

    def time_statistics_step(self, method, width):
        self._step(self.stats)

    def time_plain_step(self, method, width):
        with self.stats.paused():
            self._fb()
        self._apply()
        self.opt.step()

    def _apply(self):
        pre = self.stats.preconditioner
        for name in self.stats.layers:
            mod = self.model.get_submodule(name)
            grad = torch.cat([mod.weight.grad, mod.bias.grad[:, None]], 1)
            step = pre.precondition(name, grad)
            mod.weight.grad.copy_(step[:, :-1])
            mod.bias.grad.copy_(step[:, -1])

    def track_amortised_ratio(self, method, width):
        sgd = best_time(lambda: self.time_sgd_step(method, width))
        stats = best_time(lambda: self.time_statistics_step(method, width), 2)
        plain = best_time(lambda: self.time_plain_step(method, width))
        if method in ("kfac", "rkfac"):
            # inverse work at 1/10 per statistics step (T_inv = 100 = 10 T_updt): approximate it by
            # a tenth of the difference between a statistics step and a plain step.
            return (plain * 9 + plain + (stats - plain) / 10) / 10 / sgd
        return (plain * 9 + stats) / 10 / sgd

    track_amortised_ratio.unit = "x SGD step"

    def track_module_overhead(self, method, width):
        self.stats.remove()
        # A KFAC whose only statistics step is step 0: later steps apply the preconditioner.
        layer_methods = {"4": "auto"} if method == "bkfac" else None
        kfac = KFAC(self.model, method, T_updt=10**9, T_inv=10**9, layer_methods=layer_methods)
        self._step(kfac)
        try:
            self._fb()
            pre = kfac.preconditioner
            grads = {}
            for name in kfac.layers:
                mod = self.model.get_submodule(name)
                grads[name] = torch.cat([mod.weight.grad, mod.bias.grad[:, None]], 1)
            saved = [p.grad.clone() for p in self.model.parameters()]

            def restore():
                # kfac.step() preconditions .grad in place; repeated on one .grad it would blow up
                for p, g in zip(self.model.parameters(), saved, strict=True):
                    p.grad.copy_(g)

            def via_module():
                restore()
                kfac.step()

            bufs = {n: torch.empty_like(g) for n, g in grads.items()}

            def refresh():
                restore()
                for n, g in grads.items():
                    bufs[n].copy_(g)

            def direct():
                # as the module calls it: in place in a buffer, finiteness checked by the caller
                refresh()
                return [pre.precondition(n, bufs[n], check_finite=False, overwrite_grad=True) for n in grads]

            apply = best_time(direct, 5) - best_time(refresh, 5)
            module = best_time(via_module, 5) - best_time(restore, 5)  # the same application, through the module
            hooks = best_time(self._fb, 5) - best_time(lambda: self._fb_paused(kfac), 5)
        finally:
            kfac.remove()
        sgd = best_time(self._step, 5)
        return (max(module - apply, 0.0) + max(hooks, 0.0)) / sgd

    def _fb_paused(self, kfac):
        with kfac.paused():
            self._fb()

    track_module_overhead.unit = "fraction of the SGD step"


class TorchStatistics:
    """Capture alone (hooks, patch rows, the Monte-Carlo pass) for a CNN, batch 256."""

    params = [["mc", "empirical", "type2"]]
    param_names = ["fisher"]

    def setup(self, fisher):
        if torch is None:
            raise NotImplementedError("torch is not installed")
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                   nn.Linear(32 * 7 * 7, 10))
        self.x, self.y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
        self.kfac = KFAC(self.model, "kfac", fisher=fisher, T_updt=1)

    def teardown(self, fisher):
        if torch is not None and hasattr(self, "kfac"):
            self.kfac.remove()

    def time_forward_backward_with_capture(self, fisher):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # each call drops the previous capture
            self.model.zero_grad()
            nn.functional.cross_entropy(self.model(self.x), self.y).backward()

    def time_forward_backward_plain(self, fisher):
        with self.kfac.paused():
            self.model.zero_grad()
            nn.functional.cross_entropy(self.model(self.x), self.y).backward()

