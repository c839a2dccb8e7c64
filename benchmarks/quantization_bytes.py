"""Bytes on the wire and round-trip error per quantization mode, for one site's update.

    python benchmarks/quantization_bytes.py [--model-mb 100] [--block 64]

Encodes a float32 update (normal values) with every mode of hpcflare.filters.quantize, decodes it as the
server does before aggregation, and prints payload + scale bytes, the ratio to float32, max/mean abs
error, and encode/decode time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hpcflare.filters.quantize import MODES, dequantize, quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-mb", type=float, default=100)
    parser.add_argument("--block", type=int, default=64)
    args = parser.parse_args()
    n = int(args.model_mb * 1e6 / 4)
    update = np.random.default_rng(0).normal(0, 0.02, size=n).astype(np.float32)
    print(f"update: {n:,} float32 values ({update.nbytes / 1e6:.1f} MB), block {args.block}")
    print(f"{'mode':<6} {'wire MB':>9} {'ratio':>6} {'max err':>10} {'mean err':>10} {'enc s':>7} {'dec s':>7}")
    print(f"{'fp32':<6} {update.nbytes / 1e6:>9.1f} {1.0:>6.3f} {0.0:>10.2e} {0.0:>10.2e} {0.0:>7.2f} {0.0:>7.2f}")
    for mode in MODES:
        t0 = time.perf_counter()
        enc = quantize(update, mode, args.block)
        t1 = time.perf_counter()
        back = dequantize(enc[""], enc.get("::scale"), mode, args.block, update)
        t2 = time.perf_counter()
        wire = sum(v.nbytes for v in enc.values())
        err = np.abs(back - update)
        print(f"{mode:<6} {wire / 1e6:>9.1f} {wire / update.nbytes:>6.3f} {err.max():>10.2e} {err.mean():>10.2e} "
              f"{t1 - t0:>7.2f} {t2 - t1:>7.2f}")


if __name__ == "__main__":
    main()
