"""Compare Kronecker approximations of one Fisher block of a small MLP (paper 002, Sec. 4.1).

A tanh MLP with a softmax output is run forward on a batch of Gaussian inputs; targets are
drawn from the model's own predictive distribution (the Monte-Carlo Fisher of Martens &
Grosse), and a hand-written backward pass gives, for the chosen layer, the per-sample inputs
``a_t`` (with a bias column) and pre-activation gradients ``g_t``. The exact Fisher block
``F = (1/N) sum_t (g_t ⊗ a_t)(g_t ⊗ a_t)^T`` (row-major weight flattening) is formed densely
(the layer is small) and compared with

* K-FAC ``E[g g^T] ⊗ E[a a^T]``;
* KPSVD, the best single Kronecker product (power SVD of the rearranged block);
* deflation and Lanczos, the best two-term sums (Sec. 3.2.1-3.2.2);
* KFAC-corrected, K-FAC plus its best correction (Sec. 3.3);
* TKFAC ``δ Ψ ⊗ Φ`` (paper 003, eq. (4.9));
* EKFAC, K-FAC's eigenbasis with the optimal diagonal (paper 004).

It prints paper 002's two errors, ``|F - F_hat|_F / |F|_F`` (Error 1) and
``|spec(F) - spec(F_hat)|_2 / |spec(F)|_2`` (Error 2), and saves a bar chart when matplotlib
is installed. ``python examples/fisher_approximation_errors.py`` runs in a few seconds;
``--output fisher_errors.png`` chooses the file.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lowrank_online import (
    FisherBlockOperator,
    ekfac_factors,
    kfac_corrected,
    kfac_factors,
    kpsvd,
    tkfac_factors,
)
from lowrank_online.nn import mlp_layer_statistics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30,24,16,10", help="layer widths, comma-separated")
    parser.add_argument("--layer", type=int, default=1, help="index of the dense layer (0 = first)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="fisher_approximation_errors.png", help="PNG path of the bar chart")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    if not 0 <= args.layer < len(sizes) - 1:
        parser.error(f"--layer must be in [0, {len(sizes) - 2}]")

    a, g = mlp_layer_statistics(sizes, args.batch, args.layer, args.seed)
    F = FisherBlockOperator(a, g).to_dense()
    spec = np.linalg.eigvalsh(F)
    methods = {
        "K-FAC": lambda: kfac_factors(a, g),
        "KPSVD": lambda: kpsvd(a, g),
        "Deflation": lambda: kpsvd(a, g, terms=2, method="deflation"),
        "Lanczos": lambda: kpsvd(a, g, terms=2, method="lanczos"),
        "KFAC-corrected": lambda: kfac_corrected(a, g),
        "TKFAC": lambda: tkfac_factors(a, g).to_kronsum(),
        "EKFAC": lambda: ekfac_factors(a, g),
    }
    print(
        f"Fisher block of layer {args.layer} of a {'-'.join(map(str, sizes))} MLP: d_a = {a.shape[1]} (with bias), "
        f"d_g = {g.shape[1]}, N = {args.batch}, F is {F.shape[0]} x {F.shape[1]}"
    )
    print(f"{'method':<16}{'terms':>6}{'Error 1':>11}{'Error 2':>11}{'time [ms]':>11}")
    rows = []
    for name, build in methods.items():
        t0 = time.perf_counter()
        approx = build()
        elapsed = time.perf_counter() - t0
        M = approx.to_dense()
        err1 = np.linalg.norm(F - M) / np.linalg.norm(F)
        err2 = np.linalg.norm(spec - np.linalg.eigvalsh((M + M.T) / 2)) / np.linalg.norm(spec)
        terms = approx.n_terms if hasattr(approx, "n_terms") else "diag"
        rows.append((name, err1, err2))
        print(f"{name:<16}{terms!s:>6}{err1:>11.4f}{err2:>11.4f}{1e3 * elapsed:>11.2f}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install 'lowrank_online[plot]')")
        return
    names = [r[0] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(x - 0.2, [r[1] for r in rows], 0.4, label="Error 1: |F - F_hat|_F / |F|_F")
    ax.bar(x + 0.2, [r[2] for r in rows], 0.4, label="Error 2: spectra, l2")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("relative error")
    ax.set_ylim(0.0, 1.3 * max(max(r[1], r[2]) for r in rows))
    net = "-".join(map(str, sizes))
    ax.set_title(f"Fisher block approximations, layer {args.layer} of a {net} MLP, N={args.batch}")
    ax.legend(ncol=2, loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
