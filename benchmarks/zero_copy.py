"""Zero-copy in and out against the copying path, side by side in one run.

Host: a numpy array wrapped with ctx.from_numpy(copy=False) and read back with t.numpy(copy=False)
/ np.from_dlpack(t), against from_numpy (copy) + set_data + numpy() (copy).
CUDA (with torch on a GPU machine): a torch CUDA tensor wrapped with ctx.from_dlpack and the result
taken with torch.from_dlpack(t), against the copying path (torch -> numpy -> set_data, compute,
numpy() -> torch.cuda). Prints the data pointers, so "no copy" is visible, and the medians.

    python benchmarks/zero_copy.py [--n 4194304] [--repeat 30]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

import minigraph as mg


def _median_us(fn, repeat: int) -> tuple[float, float, float]:
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(ts), min(ts), max(ts)


def host(n: int, repeat: int) -> None:
    a = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    cpu = mg.backend_cpu_init()
    # zero-copy: the caller's array is the input, the result is read in place
    ctx = mg.Context()
    x = ctx.from_numpy(a, copy=False)
    y = ctx.scale(x, 2.0)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)

    def zero() -> np.ndarray:
        cpu.graph_compute(gf)
        return y.numpy(copy=False)

    ctx2 = mg.Context()
    x2 = ctx2.new_tensor_1d(mg.TYPE_F32, n)
    y2 = ctx2.scale(x2, 2.0)
    gf2 = ctx2.new_graph()
    mg.build_forward_expand(gf2, y2)

    def copying() -> np.ndarray:
        x2.set_data(a)
        cpu.graph_compute(gf2)
        return y2.numpy()

    out = zero()
    print(f"host: input data {a.ctypes.data:#x}, tensor data {x.buffer.data_ptr() + x.data_offs:#x}; "
          f"result view {out.ctypes.data:#x} == np.from_dlpack(t) {np.from_dlpack(y).ctypes.data:#x}")
    np.testing.assert_array_equal(zero(), copying())
    z, c = _median_us(zero, repeat), _median_us(copying, repeat)
    print(f"host, {n} f32: zero-copy {z[0]:.1f} us (min {z[1]:.1f}, max {z[2]:.1f}); "
          f"copying {c[0]:.1f} us (min {c[1]:.1f}, max {c[2]:.1f}); ratio {c[0] / z[0]:.2f}x")


def cuda(n: int, repeat: int) -> None:
    try:
        import torch
    except ImportError:
        print("cuda: torch is not installed, skipped")
        return
    if not torch.cuda.is_available():
        print("cuda: no GPU, skipped")
        return
    be = mg.backend_cuda_init(0)
    # through a scheduler the result lives in its CUDA compute buffer (a standalone CUDA backend
    # computes into a device arena and downloads the outputs to their host twin)
    sched = mg.backend_sched_new([be, mg.backend_cpu_init()])
    src = torch.randn(n, device="cuda", dtype=torch.float32)
    ctx = mg.Context()
    x = ctx.from_dlpack(src)
    y = ctx.scale(x, 2.0)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)

    def zero() -> "torch.Tensor":
        torch.cuda.synchronize()          # the producer's stream is not minigraph's
        sched.graph_compute(gf)
        return torch.from_dlpack(y)

    ctx2 = mg.Context()
    x2 = ctx2.new_tensor_1d(mg.TYPE_F32, n)
    y2 = ctx2.scale(x2, 2.0)
    gf2 = ctx2.new_graph()
    mg.build_forward_expand(gf2, y2)

    def copying() -> "torch.Tensor":
        x2.set_data(src.cpu().numpy())
        be.graph_compute(gf2)
        be.synchronize()
        return torch.from_numpy(y2.numpy()).cuda()

    out = zero()
    print(f"cuda: torch input {src.data_ptr():#x}, minigraph input {x.buffer.data_ptr() + x.data_offs:#x}; "
          f"minigraph result {y.buffer.data_ptr() + y.data_offs:#x}, torch.from_dlpack(result) {out.data_ptr():#x}")
    torch.testing.assert_close(out, copying())
    torch.testing.assert_close(out, src * 2)
    z, c = _median_us(zero, repeat), _median_us(copying, repeat)
    print(f"cuda, {n} f32: zero-copy {z[0]:.1f} us (min {z[1]:.1f}, max {z[2]:.1f}); "
          f"copying {c[0]:.1f} us (min {c[1]:.1f}, max {c[2]:.1f}); ratio {c[0] / z[0]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 22)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}")
    host(args.n, args.repeat)
    cuda(args.n, args.repeat)


if __name__ == "__main__":
    main()
