"""Per-structure analysis speed against freud on the same input, in the same run.

    python tools/bench_analysis.py [--sizes 300 100000] [--repeat 3]

For each size, an FCC sphere with 0.1 A thermal noise. ``btomo`` is
:class:`btomo.analysis.structure.BondOrder` (neighbours, Q4, Q6, W6 coarse-grained and local,
s6, crystalline atoms) plus the reading of those results; ``freud`` computes the same numbers:
``Steinhardt([4, 6], average)``, ``Steinhardt(6, average, wl)``, and
``SolidLiquid(6, 0.8)`` for the crystalline bonds (each builds its own neighbour query; freud
needs a padded periodic box). ``LocalGeometry`` (mean bond length, radial strain from a fitted
FCC lattice), which freud has no counterpart of, is timed on its own. Medians of ``--repeat``
runs; freud's thread count is what it chooses on this machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from btomo.analysis.structure import BondOrder, LocalGeometry
from btomo.kernels.crystal import FCC_VOLUME_PER_ATOM, fcc_cluster


def _cluster(n: int, rng: np.random.Generator) -> np.ndarray:
    d_nm = (6.0 * n * FCC_VOLUME_PER_ATOM() / np.pi) ** (1 / 3) / 10.0
    p = fcc_cluster(d_nm)
    return p + rng.normal(0.0, 0.1, p.shape)


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 100000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import freud

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, freud {freud.__version__}, "
          f"numpy {np.__version__}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        p = _cluster(n, rng)
        box = freud.box.Box.cube(2.0 * (float(np.ptp(p, axis=0).max()) + 20.0))
        system = (box, p.astype(np.float32))
        nq = {"r_max": 3.41, "exclude_ii": True}

        def ours():
            bo = BondOrder().compute(p)
            return bo.ql(4), bo.ql(6), bo.wl(6), bo.ql(6, coarse=False), bo.crystalline

        def theirs():
            out = []
            for kw in ({"l": [4, 6], "average": True},  # both degrees in one call: freud at its leanest
                       {"l": 6, "average": True, "wl": True, "wl_normalize": True}):
                st = freud.order.Steinhardt(**kw)
                st.compute(system, neighbors=nq)
                out.append(st.particle_order)
            sl = freud.order.SolidLiquid(l=6, q_threshold=0.8, solid_threshold=6, normalize_q=True)
            sl.compute(system, neighbors=nq)
            out.append(sl.num_connections)
            return out

        ours()
        theirs()  # warm-up (imports, first-call costs)
        t_ours = _median_time(ours, args.repeat)
        t_freud = _median_time(theirs, args.repeat)
        t_geo = _median_time(lambda: LocalGeometry().compute(p), args.repeat)
        unit, scale = ("ms", 1e3) if len(p) < 10000 else ("s", 1.0)
        print(f"{len(p):>7} atoms: btomo BondOrder {t_ours * scale:8.3f} {unit}, freud {t_freud * scale:8.3f} {unit}, "
              f"ratio freud/btomo {t_freud / t_ours:5.2f}; LocalGeometry (strain, bonds) {t_geo * scale:8.3f} {unit}")


if __name__ == "__main__":
    main()
