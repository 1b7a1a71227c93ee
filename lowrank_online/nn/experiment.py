"""Experiments on the library's MLP: one run's configuration, several methods over seeds, the table.

The command line (``lowrank-online``), the main job's training section and the evidence scripts
describe a run with a :class:`RunConfig` and call :func:`build_run` / :func:`compare`; the
command line only parses arguments into it.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..curvature import METHODS, KFACPreconditioner
from .data import Dataset, load_dataset
from .mlp import MLP
from .optim import SGD, Adam
from .train import History, train

__all__ = ["FIRST_ORDER", "RunConfig", "build_run", "compare", "compare_table", "namespace_for"]

FIRST_ORDER = ("sgd", "adam")
# Per-family defaults (paper 001, Sec. 6: no momentum and KL-clipping for the curvature methods).
DEFAULTS = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adam": {"lr": 1e-3},
    "curvature": {"lr": 0.1, "momentum": 0.0, "kl_clip": 1e-2},
}
ARCHITECTURES = {"digits": [128], "teacher-student": [256]}


@dataclass(frozen=True)
class RunConfig:
    """Everything but the method and the seed that defines a training run (the CLI's options).

    ``None`` for ``hidden``, ``dtype``, ``lr``, ``momentum`` and ``kl_clip`` means the per-dataset,
    per-device or per-family default (:data:`ARCHITECTURES`, :data:`DEFAULTS`).
    """

    data: str = "teacher-student"
    epochs: int = 5
    batch_size: int = 128
    hidden: Sequence[int] | None = None
    activation: str = "relu"
    device: str = "cpu"
    dtype: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float = 1e-4
    damping: float = 0.1
    damping_mode: str = "relative"
    gradient_damping: float = 0.0
    damping_adaptation: str | None = None
    rank: int = 64
    oversample: int = 10
    decay: float = 0.95
    T_updt: int = 1
    T_inv: int = 10
    T_brand: int = 1
    T_rsvd: int = 10
    T_corct: int = 10
    phi_crc: float = 0.5
    kl_clip: float | None = None
    fisher: str = "mc"
    factored: bool = False
    continuation: bool = True
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more KFACPreconditioner options


def namespace_for(device: str) -> Any:
    """The array namespace of ``device`` (``"cpu"``: NumPy; ``"cuda"``: CuPy, which must see a GPU)."""
    if device == "cpu":
        import array_api_compat.numpy as xp

        return xp
    if device == "cuda":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device")
        except Exception as err:  # no cupy, no driver or no device: all mean "unavailable"
            raise ValueError(f"device 'cuda' needs CuPy and a CUDA device ({err})") from None
        import array_api_compat.cupy as xp

        return xp
    raise ValueError(f"`device` must be 'cpu' or 'cuda', got {device!r}")


def build_run(config: RunConfig, method: str, seed: int) -> tuple[Dataset, MLP, SGD | Adam, KFACPreconditioner | None]:
    """The data, model, optimizer and (for curvature methods) preconditioner of one run."""
    if method not in FIRST_ORDER and method not in METHODS:
        raise ValueError(f"`method` must be one of {[*FIRST_ORDER, *METHODS]}, got {method!r}")
    xp = namespace_for(config.device)
    dtype = config.dtype or ("float64" if config.device == "cpu" else "float32")
    data = load_dataset(config.data, seed=0).to(xp, None, dtype)
    hidden = list(config.hidden) if config.hidden is not None else ARCHITECTURES[config.data]
    model = MLP([data.n_features, *hidden, data.n_classes], activation=config.activation, seed=seed,
                xp=xp, device=None, dtype=dtype)
    family = method if method in FIRST_ORDER else "curvature"
    defaults = DEFAULTS[family]
    lr = config.lr if config.lr is not None else defaults["lr"]
    if method == "adam":
        optimizer: SGD | Adam = Adam(lr=lr, weight_decay=config.weight_decay)
    else:
        momentum = config.momentum if config.momentum is not None else defaults["momentum"]
        optimizer = SGD(lr=lr, momentum=momentum, weight_decay=config.weight_decay)
    pre = None
    if family == "curvature":
        pre = KFACPreconditioner(
            method, decay=config.decay, damping=config.damping, damping_mode=config.damping_mode,
            gradient_damping=config.gradient_damping, damping_adaptation=config.damping_adaptation,
            continuation=config.continuation, rank=config.rank, oversample=config.oversample,
            T_updt=config.T_updt, T_inv=config.T_inv, T_brand=config.T_brand, T_rsvd=config.T_rsvd,
            T_corct=config.T_corct, phi_crc=config.phi_crc,
            kl_clip=config.kl_clip if config.kl_clip is not None else defaults["kl_clip"], seed=seed,
            **config.extra,
        )
    return data, model, optimizer, pre


def compare(config: RunConfig, methods: Sequence[str], seeds: int,
            log: Callable[[str], None] | None = None) -> dict[str, list[History]]:
    """Train every method for every seed (same seeds for all); ``log`` receives one line per run."""
    runs: dict[str, list[History]] = {m: [] for m in methods}
    for seed in range(seeds):
        for m in methods:
            data, model, optimizer, pre = build_run(config, m, seed)
            hist = train(model, data, optimizer=optimizer, preconditioner=pre, epochs=config.epochs,
                         batch_size=config.batch_size, fisher=config.fisher, factored=config.factored, seed=seed,
                         label=m, progress=config.progress)
            runs[m].append(hist)
            if log is not None:
                log(f"seed {seed} {m:<15} final acc {hist.test_accuracy[-1]:.4f}  {sum(hist.epoch_time):.1f} s "
                    f"({sum(hist.curvature_time):.1f} s curvature)")
    return runs


def _cell(values: list[float | None], digits: int, integer: bool = False) -> str:
    """Mean (± sd with more than one value) of the values that exist, ``(k/n)`` when some don't."""
    got = [v for v in values if v is not None]
    if not got:
        return "N/A"
    mean = statistics.fmean(got)
    if integer and all(float(v).is_integer() for v in got) and len(set(got)) == 1:
        text = f"{int(got[0])}"
    else:
        text = f"{mean:.{digits}f}"
        if len(got) > 1:
            text += f"±{statistics.stdev(got):.{digits}f}"
    return text if len(got) == len(values) else f"{text} ({len(got)}/{len(values)})"


def compare_table(methods: Sequence[str], runs: dict[str, list[History]], targets: Sequence[float]) -> str:
    """The table of :func:`compare`'s runs: time to each target accuracy, time and curvature time per
    epoch, epochs to the first target, final accuracy; mean ± sd over seeds where there are several."""
    head = "".join(f" {'t(acc>=' + format(t, '.2f') + ') s':>22}" for t in targets)
    lines = [f"{'method':<15}{head} {'t_epoch s':>14} {'curv./epoch s':>14} "
             f"{'epochs to ' + format(targets[0], '.2f'):>16} {'final acc':>16}"]
    partial = False
    for m in methods:
        hs = runs[m]
        cols = [_cell([h.time_to(t) for h in hs], 2) for t in targets]
        epochs = _cell([h.epochs_to(targets[0]) for h in hs], 1, integer=True)
        partial |= any("/" in c for c in (*cols, epochs))
        lines.append(f"{m:<15}" + "".join(f" {c:>22}" for c in cols)
                     + f" {_cell([statistics.fmean(h.epoch_time) for h in hs], 2):>14}"
                     + f" {_cell([statistics.fmean(h.curvature_time) for h in hs], 2):>14}"
                     + f" {epochs:>16} {_cell([h.test_accuracy[-1] for h in hs], 4):>16}")
    notes = ["N/A: target not reached"]
    if partial:
        notes.append("(k/n): reached by k of n seeds, mean over those")
    return "\n".join(lines) + "\n" + "; ".join(notes)


def log_to_stderr(line: str) -> None:
    print(f"  {line}", file=sys.stderr)
