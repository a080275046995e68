"""Bench: Authenticode (SHA-256 + SHA-384 in one pass) of a UKI vs. a plain SHA-256 of the same file.

Prints the ratio against the baseline measured in the same run, so it is comparable across machines.
Usage: python bench/measure_authenticode.py FILE.efi [ROUNDS]
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

from sealbox.formats.authenticode import authenticode_all


def best_of(rounds: int, fn) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    data = Path(sys.argv[1]).read_bytes()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    base = best_of(rounds, lambda: (hashlib.sha256(data).digest(), hashlib.sha384(data).digest()))
    ours = best_of(rounds, lambda: authenticode_all(data))
    mb = len(data) / 1e6
    print(f"file: {mb:.1f} MB; sha256+sha384 baseline {base * 1000:.1f} ms; authenticode {ours * 1000:.1f} ms; "
          f"ratio {ours / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
