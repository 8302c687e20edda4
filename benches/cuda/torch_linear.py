"""torch fp16 F.linear at M = 1 on the INT4 GEMV's shapes: the baseline lowbit's W4 kernel is
compared with (issue 12: >= 3.5x on 8192x28672). Also torch's device-to-device copy bandwidth, a
cross-check of the figure the Rust bench measures. Writes JSON to argv[1].

Runs on the GPU machine (python3 with torch); the weights rotate over enough copies to exceed
the L2 cache, each figure is the median of CUDA-event timings after warm-up.
"""

import functools
import itertools
import json
import sys

import torch
from torch.nn import functional

SHAPES = [(4096, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]  # (in K, out N)


def median_ms(fn, iters=50):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def copy_gb_per_s(dev):
    n = 1 << 28  # 1 GiB of f32
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    ms = median_ms(functools.partial(dst.copy_, src), 20)
    return 2 * n * 4 / (ms / 1e3) / 1e9


def linear_row(dev, k, nout):
    wbytes = nout * k * 2
    copies = max(1, min(8, -(-(256 << 20) // wbytes)))
    ws = [torch.randn(nout, k, device=dev, dtype=torch.float16) * 0.02 for _ in range(copies)]
    x = torch.randn(1, k, device=dev, dtype=torch.float16)
    turn = itertools.cycle(ws)
    ms = median_ms(lambda: functional.linear(x, next(turn)))
    gbs = (wbytes + 2 * k + 2 * nout) / (ms / 1e3) / 1e9
    print(f"torch fp16 F.linear M=1 {k}x{nout}: {ms * 1e3:.1f} us, {gbs:.0f} GB/s", flush=True)
    return {"k": k, "n": nout, "seconds": ms / 1e3, "gb_per_s": gbs}


def main(out_path):
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    res["copy_gb_per_s"] = copy_gb_per_s(dev)
    torch.cuda.empty_cache()
    res["rows"] = []
    for k, nout in SHAPES:
        res["rows"].append(linear_row(dev, k, nout))
        torch.cuda.empty_cache()
    with open(out_path, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
