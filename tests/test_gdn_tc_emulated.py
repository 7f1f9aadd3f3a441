"""The CUDA C++ GATED_DELTA_NET kernels (backends/cuda/gdn_tc_*.cu) on a CPU: compiled with the host
compiler over tests/gdn_emu/emu.h (one std::thread a CUDA thread, warp collectives and mma.sync
m16n8k8 tf32 emulated with the PTX fragment layout, cp.async landing only at its wait, shared
memory poisoned with NaN) and AddressSanitizer, then checked by tests/gdn_emu/harness.cpp against a
float64 recurrence. CI has no GPU: this is where it runs the C++ path's indexing, padding and
synchronisation (the GPU runs the same sources through NVRTC: tests/test_gdn_cuda_fast.py).
"""
import os
import shutil
import subprocess

import pytest

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gdn_emu")
SRC = os.path.join(os.path.dirname(HERE), "..", "backends", "cuda")
CXX = shutil.which("g++") or shutil.which("c++")

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


def _build(tmp_path, name, defines):
    exe = str(tmp_path / name)
    cmd = [CXX, "-std=c++20", "-O0", "-fsanitize=address", "-fno-omit-frame-pointer",
           *[f"-D{d}" for d in defines], "-I", HERE, "-I", SRC, os.path.join(HERE, "harness.cpp"), "-o", exe,
           "-lpthread"]
    return exe, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(exe, *args, interleaved=False, inplace=False):
    env = dict(os.environ, GDN_EMU_INTERLEAVED="1" if interleaved else "0", GDN_EMU_INPLACE="1" if inplace else "0")
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    words = r.stdout.split()          # "out <err> state <err> unwritten <n>"
    return float(words[1]), float(words[3]), int(words[5])


def test_emulated_kernels_match_float64(tmp_path):
    builds = [_build(tmp_path, "gda", ["STATE_NJ=2", "STATE_KS=2"]),
              _build(tmp_path, "kda", ["GDN_KDA=1", "STATE_NJ=1", "STATE_KS=4"])]
    for exe, proc in builds:
        log = proc.communicate(timeout=300)[0]
        if proc.returncode != 0 and "barrier" in log:
            pytest.skip("the host compiler has no C++20 <barrier>")
        assert proc.returncode == 0, log
    gda, kda = (b[0] for b in builds)
    # S=12: k-steps past S zero-padded; T=40: a partial chunk; 2 value heads on 1 q/k head
    # KDA at gates >= -5: the diagonal blocks' factored products; >= -12: most keys decay past e^-60
    # inside a 16-row block and take the pair-by-pair terms (factored, they would overflow)
    # T=70: a whole chunk first (every 16-row block of the prep's inverse, all six of its block products)
    for exe, g_lo, T in ((gda, -20.0, 40), (kda, -5.0, 40), (kda, -12.0, 40), (kda, -5.0, 70)):
        out, state, unwritten = _run(exe, "chunked", 12, 1, 2, T, 1, 1, g_lo, 1)
        assert unwritten == 0 and out < 2e-6 and state < 2e-6, (exe, T, out, state)
    for kda_flag in (0, 1):   # decode with K = 2 (a zeroed snapshot slot), S = 12: a partial float4 lane set
        out, state, unwritten = _run(gda, "decode", 12, 1, 2, 3, 1, kda_flag, 2, -5.0, 2)
        assert unwritten == 0 and out < 2e-6 and state < 2e-6, (kda_flag, out, state)
    # the interleaved q/k head map (the op's bcast 1): 2 q/k heads, 4 value heads, h reads h / 2
    for exe, args in ((gda, ("chunked", 12, 2, 4, 40, 1, 1, -20.0, 3)), (kda, ("chunked", 12, 2, 4, 40, 1, 1, -5.0, 3)),
                      (gda, ("decode", 12, 2, 4, 2, 1, 0, 1, -5.0, 3))):
        out, state, unwritten = _run(exe, *args, interleaved=True)
        assert unwritten == 0 and out < 2e-6 and state < 2e-6, (exe, args, out, state)
    # the final state over the input state (a state destination that is the slot it was read from)
    for exe, args in ((gda, ("chunked", 12, 1, 2, 70, 1, 1, -20.0, 4)), (kda, ("chunked", 12, 1, 2, 40, 1, 1, -5.0, 4)),
                      (gda, ("decode", 12, 1, 2, 2, 1, 1, 1, -5.0, 4))):
        out, state, unwritten = _run(exe, *args, inplace=True)
        assert unwritten == 0 and out < 2e-6 and state < 2e-6, (exe, args, out, state)
