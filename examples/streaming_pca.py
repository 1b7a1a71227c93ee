"""Streaming PCA of data that does not fit in memory, with and without forgetting.

Three parts, each printing what it measured:

1. **Out of core.** A data set of ``--samples`` x ``--features`` float32 values is written to a
   ``.npy`` file and opened as a memory map. ``StreamingPCA(n_components).fit(X)`` reads it in
   batches of ``--batch`` rows (a progress bar with ``verbose=True``); scikit-learn's
   ``IncrementalPCA`` does the same when it is installed, and the two are compared: the
   components, the explained variances and the time.
2. **Checkpoints.** The same file is streamed with ``partial_fit`` one batch at a time. Halfway,
   the estimator is saved with ``save_state(path, pca.state_dict())`` (a plain ``.npz``, no
   pickle), rebuilt with ``StreamingPCA.from_state_dict(load_state(path))`` and fed the rest:
   the result is identical, bit for bit, to the uninterrupted fit.
3. **Forgetting.** A sensor stream whose principal subspace turns slowly: ``decay=rho``
   follows the current subspace (the weight of the past saturates at about
   ``batch / (1 - rho)`` samples), ``decay=None`` averages the whole history. The printed figure
   is the sine of the largest principal angle between the estimate and the current subspace.

``--backend torch`` (or ``array_api_strict``) runs parts 2 and 3 on that namespace's arrays;
the results come back in it, in float32. Run ``python examples/streaming_pca.py`` (about half a
minute on 2 cores) or ``--samples 4000 --features 500`` for a quick look.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np

from lowrank_online import StreamingPCA, load_state, save_state


def write_dataset(path: pathlib.Path, n: int, d: int, latent: int, seed: int) -> np.memmap:
    """A low-rank signal plus noise, written block by block (never held whole in memory)."""
    rng = np.random.default_rng(seed)
    loadings = (rng.standard_normal((latent, d)) * (2.0 * 0.8 ** np.arange(latent))[:, None]).astype(np.float32)
    offset = rng.standard_normal(d).astype(np.float32)
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 4096):
        stop = min(start + 4096, n)
        block = rng.standard_normal((stop - start, latent), dtype=np.float32) @ loadings
        block += 0.5 * rng.standard_normal(block.shape, dtype=np.float32) + offset
        X[start:stop] = block
    X.flush()
    return np.load(path, mmap_mode="r")


def out_of_core(X: np.memmap, args: argparse.Namespace) -> StreamingPCA:
    n, d = X.shape
    print(f"1. out of core: {n:,} x {d:,} float32 on disk ({X.nbytes / 2**20:.0f} MiB), batches of {args.batch}, "
          f"n_components {args.components}")
    t0 = time.perf_counter()
    pca = StreamingPCA(args.components, batch_size=args.batch, verbose=not args.no_progress).fit(X)
    t_ours = time.perf_counter() - t0
    print(f"   StreamingPCA.fit: {t_ours:.2f} s; the top 5 components explain "
          f"{100 * float(np.sum(pca.explained_variance_ratio_[:5])):.1f}% of the variance")
    try:
        from sklearn.decomposition import IncrementalPCA
    except ImportError:
        print("   (scikit-learn is not installed: no comparison)")
        return pca
    t0 = time.perf_counter()
    ref = IncrementalPCA(args.components, batch_size=args.batch).fit(X)
    t_ref = time.perf_counter() - t0
    comp = np.abs(pca.components_ - ref.components_).max()
    var = np.abs(pca.explained_variance_ - ref.explained_variance_).max() / ref.explained_variance_[0]
    print(f"   scikit-learn IncrementalPCA.fit: {t_ref:.2f} s ({t_ref / t_ours:.1f}x StreamingPCA's time); "
          f"largest differences: components {comp:.1e}, explained variances {var:.1e} (float32 data)")
    return pca


def checkpoints(X: np.memmap, args: argparse.Namespace, xp) -> None:
    n = X.shape[0]
    starts = list(range(0, n - args.batch + 1, args.batch))
    batch = lambda s: xp.asarray(np.ascontiguousarray(X[s:s + args.batch]))  # noqa: E731
    whole = StreamingPCA(args.components)
    for s in starts:
        whole.partial_fit(batch(s))
    half = len(starts) // 2
    pca = StreamingPCA(args.components)
    for s in starts[:half]:
        pca.partial_fit(batch(s))
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "pca.npz"
        save_state(path, pca.state_dict())
        size = path.stat().st_size
        resumed = StreamingPCA.from_state_dict(load_state(path), xp=xp)
    for s in starts[half:]:
        resumed.partial_fit(batch(s))
    same = all(bool(xp.all(getattr(resumed, a) == getattr(whole, a)))
               for a in ("components_", "singular_values_", "mean_", "var_", "explained_variance_"))
    print(f"2. checkpoint after {half} of {len(starts)} batches ({size / 2**20:.1f} MiB npz), resumed: identical to "
          f"the uninterrupted stream: {same}; components_ is a {type(resumed.components_).__module__} array of "
          f"{resumed.components_.dtype}")


def forgetting(args: argparse.Namespace, xp) -> None:
    rng = np.random.default_rng(args.seed + 1)
    d, k, n, steps = 200, 3, 32, 300
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    trackers = {"decay=None": StreamingPCA(k), f"decay={args.decay}": StreamingPCA(k, decay=args.decay)}
    errors: dict[str, list[float]] = {name: [] for name in trackers}
    for t in range(steps):
        # the subspace turns by a small angle per batch (a slow drift of the sensors)
        angle = 1.2 * t / steps
        U = basis[:, :k] * np.cos(angle) + basis[:, k:2 * k] * np.sin(angle)
        B = (rng.standard_normal((n, k)) * [3.0, 2.0, 1.5]) @ U.T + 0.2 * rng.standard_normal((n, d))
        for name, est in trackers.items():
            est.partial_fit(xp.asarray(B.astype(np.float32)))
            if t % 50 == 49:
                V = np.asarray(est.components_, dtype=np.float64).T
                errors[name].append(float(np.linalg.norm(V - U @ (U.T @ V), 2)))
    print(f"3. forgetting: a 3-dim subspace of {d} features turning over {steps} batches of {n} rows; sin of the "
          "largest principal angle to the current subspace, every 50 batches:")
    for name, errs in errors.items():
        print(f"   {name:12s} " + "  ".join(f"{e:.3f}" for e in errs))
    N = trackers[f"decay={args.decay}"].n_samples_seen_
    print(f"   with decay the weight of the past saturates at n_samples_seen_ = {N:.0f} = {n} / (1 - {args.decay})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--features", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--components", type=int, default=20)
    parser.add_argument("--latent", type=int, default=30)
    parser.add_argument("--decay", type=float, default=0.9)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "torch", "array_api_strict"])
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.backend == "torch":
        import array_api_compat.torch as xp
    elif args.backend == "array_api_strict":
        import array_api_strict as xp
    else:
        import array_api_compat.numpy as xp
    with tempfile.TemporaryDirectory() as tmp:
        X = write_dataset(pathlib.Path(tmp) / "data.npy", args.samples, args.features, args.latent, args.seed)
        out_of_core(X, args)
        checkpoints(X, args, xp)
        del X
    forgetting(args, xp)


if __name__ == "__main__":
    main()
