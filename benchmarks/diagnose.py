"""Data diagnosis benchmarks, both in one run: label issues on the published 10,000 x 10 CIFAR-10 probabilities
against cleanlab (``diagnose_labels.py``: time ratio, goal <= 1.0), then near duplicates between the 50,000 CIFAR-10
training and 10,000 test images (``diagnose_duplicates.py``: wall time and peak memory, against imagehash and
cleanvision's near-duplicate check on the same images).

    python benchmarks/diagnose.py                 # both, with each script's defaults
    python benchmarks/diagnose.py --quick         # fewer repeats, the synthetic duplicate set (no decoding)
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run: 2 repeats, synthetic duplicates")
    args = ap.parse_args()
    runs = [("diagnose_labels.py", ["--repeats", "2"] if args.quick else []),
            ("diagnose_duplicates.py", ["--synthetic"] if args.quick else [])]
    for script, argv in runs:
        print(f"\n=== {script} {' '.join(argv)}", flush=True)
        sys.argv = [str(HERE / script), *argv]
        runpy.run_path(str(HERE / script), run_name="__main__")


if __name__ == "__main__":
    main()
