"""Bytes on the wire and round-trip error per quantization mode, for one site's update.

    python benchmarks/quantization_bytes.py [--model-mb 100] [--block 64]

Encodes a float32 update (normal values) with every mode of hpcflare.filters.quantize, decodes it as the
server does before aggregation, and prints payload + scale bytes, the ratio to float32, max/mean abs
error, encode/decode time, and the peak of numpy's allocations beyond the encoded (or decoded) output
(tracemalloc): the working memory, which stays a few MB whatever the model size (it is done chunk by chunk).

    python benchmarks/quantization_bytes.py --model-mb 2000      # the large-model check (~7 GB of RAM)
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from hpcflare.filters.quantize import MODES, dequantize, quantize


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-mb", type=float, default=100)
    parser.add_argument("--block", type=int, default=64)
    args = parser.parse_args()
    n = int(args.model_mb * 1e6 / 4)
    update = np.random.default_rng(0).normal(0, 0.02, size=n).astype(np.float32)
    print(f"update: {n:,} float32 values ({update.nbytes / 1e6:.1f} MB), block {args.block}")
    print(
        f"{'mode':<6} {'wire MB':>9} {'ratio':>6} {'max err':>10} {'mean err':>10} {'enc s':>7} {'dec s':>7} "
        f"{'enc work MB':>11} {'dec work MB':>11}"
    )
    print(
        f"{'fp32':<6} {update.nbytes / 1e6:>9.1f} {1.0:>6.3f} {0.0:>10.2e} {0.0:>10.2e} {0.0:>7.2f} {0.0:>7.2f}"
    )
    for mode in MODES:
        tracemalloc.start()
        t0 = time.perf_counter()
        enc = quantize(update, mode, args.block)
        t1 = time.perf_counter()
        wire = sum(v.nbytes for v in enc.values())
        enc_work = tracemalloc.get_traced_memory()[1] - wire
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        t2 = time.perf_counter()
        back = dequantize(enc[""], enc.get("::scale"), mode, args.block, update)
        t3 = time.perf_counter()
        dec_work = tracemalloc.get_traced_memory()[1] - before - back.nbytes
        tracemalloc.stop()
        err_max, err_sum = 0.0, 0.0
        for start in range(0, n, 1 << 22):  # the error in pieces too: no model-sized temporary here either
            err = np.abs(back[start : start + (1 << 22)] - update[start : start + (1 << 22)])
            err_max, err_sum = max(err_max, float(err.max())), err_sum + float(err.sum(dtype=np.float64))
        print(
            f"{mode:<6} {wire / 1e6:>9.1f} {wire / update.nbytes:>6.3f} {err_max:>10.2e} {err_sum / n:>10.2e} "
            f"{t1 - t0:>7.2f} {t3 - t2:>7.2f} {enc_work / 1e6:>11.1f} {dec_work / 1e6:>11.1f}",
            flush=True,
        )
        del enc, back


if __name__ == "__main__":
    main()
