"""Draw time of each app page on real run stores (Streamlit's AppTest, no browser).

    PYTHONPATH=$PWD python benchmarks/bench_app.py [RUNS_DIR] [--repeat N]

Every store in RUNS_DIR is picked. For each page: the first draw (cold: stores read, intervals
bootstrapped, cached) and the median of N warm redraws (what a visitor waits for on a page change).
The target is under 2 s per page on the embedded default's stores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from workbench.app.pages import NAMES

ROOT = Path(__file__).resolve().parents[1]
# the views of the Representations page (a radio; each is timed too)
VIEWS = ["CKA to clean", "CKA between layers", "Probes", "Logit lens", "Norm drift", "Retrieval and induction"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", default="runs")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    from workbench.app_data import find_stores, store_info

    stores = [str(p) for p in find_stores(args.runs)]
    if not stores:
        sys.exit(f"no *.zarr stores in {args.runs}: make some with `workbench run ... --out {args.runs}/NAME.zarr`")
    sys.argv = ["streamlit_app.py", "--runs", args.runs]
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=600)
    start = time.perf_counter()
    at.run()
    first = time.perf_counter() - start
    listing = {}
    for s in stores:
        t0 = time.perf_counter()
        listing[s] = store_info(s)  # uncached: read, integrity check, QC summary
        listing[s]["seconds"] = time.perf_counter() - t0
    readable = [s for s in stores if not listing[s]["error"]]
    for s, info in listing.items():
        print(f"listing {Path(s).name}: {info['seconds']:.2f} s ({info['conditions']} conditions, "
              f"{info['size_mb']:.1f} MB){' ' + info['error'] if info['error'] else ''}")
    start = time.perf_counter()
    next(m for m in at.multiselect if m.label == "Stores").set_value(readable).run()
    pick = time.perf_counter() - start
    print(f"{len(stores)} store(s) in {args.runs}; app start (listing, integrity checks) {first:.2f} s, "
          f"picking every store {pick:.2f} s")
    print(f"{'page':<18}{'cold s':>8}{'warm s':>8}  charts  errors")
    for page in NAMES:
        at.switch_page(f"app_pages/{page}.py")
        start = time.perf_counter()
        at.run()
        cold = time.perf_counter() - start
        warm = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - start)
        problems = len(at.exception) + len(at.error)
        charts = len(at.get("vega_lite_chart"))
        print(f"{page:<18}{cold:>8.2f}{statistics.median(warm):>8.2f}  {charts:>6}  {problems:>6}")
        if page == "representations" and not problems and any(r.key == "repr_view" for r in at.radio):
            for view in VIEWS[1:]:
                start = time.perf_counter()
                at.radio(key="repr_view").set_value(view).run()
                cold = time.perf_counter() - start
                start = time.perf_counter()
                at.run()
                print(f"  {view:<24}{cold:>8.2f}{time.perf_counter() - start:>8.2f}  "
                      f"{len(at.get('vega_lite_chart')):>6}  {len(at.exception) + len(at.error):>6}")
            at.radio(key="repr_view").set_value(VIEWS[0]).run()


if __name__ == "__main__":
    main()
