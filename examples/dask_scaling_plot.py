"""Plot the time of one streaming update on Dask against d, with its peers (docs/scaling.rst).

Reads the figures that ``python benchmarks/bench_dask.py --json PATH`` wrote, or runs the
benchmark itself when no file is given (``--quick`` for a smoke run), and draws time against d
on log-log axes: the Dask update, the same update in one NumPy process, and
``dask.array.linalg.svd_compressed`` on the concatenated stream of T batches. A dotted line
of slope 1 marks linear scaling.

Run ``python examples/dask_scaling_plot.py --from bench.json --out docs/_static/dask_scaling.png``.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", help="JSON written by python benchmarks/bench_dask.py --json")
    parser.add_argument("--quick", action="store_true", help="run the quick benchmark instead")
    parser.add_argument("--out", default="dask_scaling.png")
    args = parser.parse_args(argv)

    if args.source:
        with open(args.source) as fh:
            res = json.load(fh)
    else:
        import pathlib
        import sys

        # The benchmark lives in the repository's benchmarks/ folder (not installed), whose modules
        # import each other by bare name.
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
        import bench_dask

        res = json.loads(json.dumps(bench_dask.run(args.quick), default=str))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(points: dict) -> tuple[list[int], list[float]]:
        ds = sorted(points, key=int)
        return [int(d) for d in ds], [
            float(points[d]["time"] if isinstance(points[d], dict) else points[d]) for d in ds
        ]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    d, t = series(res["dask"])
    ax.loglog(d, t, "o-", color="C0", label=f"Brand update on Dask (r = n = {res['r']})")
    if res.get("numpy"):
        dn, tn = series(res["numpy"])
        ax.loglog(dn, tn, "s--", color="C1", label="same update, one NumPy process")
    for i, (batches, points) in enumerate(sorted(res["svd_compressed"].items(), key=lambda kv: int(kv[0]))):
        ds, ts = series(points)
        ax.loglog(ds, ts, "^-", color=f"C{2 + i}", label=f"svd_compressed, concatenated {batches} batches")
    ax.loglog(d, [t[0] * x / d[0] for x in d], ":", color="gray", label="slope 1 (linear in d)")
    ax.set_xlabel("d (rows of the tall factors)")
    ax.set_ylabel("seconds")
    ax.set_title("LocalCluster, 2 worker processes x 1 thread")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
