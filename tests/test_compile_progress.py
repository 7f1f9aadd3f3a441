"""Visible, shorter first runs: the compile progress line, `minigraph warmup`, and plans that
compile only the kernel forms they run (Kernel.pick, DualKernel.any_layout, call_kernel)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit, types
from numba.core.errors import TypingError

import minigraph as mg
from minigraph.backends.cpu import gated_delta_net as gdn_cpu
from minigraph.backends.cpu import linalg as linalg_cpu
from minigraph.backends.cpu import program
from minigraph.backends.cpu.backend import node_variant
from minigraph.core.registry import kernels_for

# one CUMSUM over a transposed view (strided source) and one over a contiguous tensor
GRAPH = """
import numpy as np, minigraph as mg
ctx = mg.Context()
a = ctx.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
c = ctx.cumsum(ctx.transpose(a))
gf = ctx.new_graph(); mg.build_forward_expand(gf, c)
mg.backend_cpu_init(1).graph_compute(gf)
assert np.allclose(c.numpy(), np.cumsum(np.arange(12, dtype=np.float32).reshape(3, 4).T, axis=1))
"""


def _run(code: str, cache, quiet: str = "0", *args: str, jobs: str = "1") -> subprocess.CompletedProcess:
    """`code` (or `python -m minigraph *args`) on its own caches; jobs: MINIGRAPH_COMPILE_JOBS
    (1: every compile in that process, in plan order, so the lines below are exact)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache / "numba"), MINIGRAPH_CACHE_DIR=str(cache / "mg"),
               MINIGRAPH_QUIET=quiet, MINIGRAPH_COMPILE_JOBS=jobs)
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "minigraph", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res


def _lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("minigraph")]


def test_progress_names_each_compiled_kernel_then_stays_silent_when_cached(tmp_path):
    cold = _lines(_run(GRAPH, tmp_path).stderr)
    assert cold[0] == "minigraph: compiling CPU kernels 1/2 (cumsum)"
    assert cold[1] == "minigraph: compiling CPU kernels 2/2 (executor)"
    assert cold[-1].startswith("minigraph: compiled 2 CPU kernels in ")
    assert _lines(_run(GRAPH, tmp_path).stderr) == []          # everything loads from the disk cache


def test_progress_with_compile_workers_names_every_job_once(tmp_path):
    """Two compile processes: each job is announced once whichever process takes it, numbered
    in order, and the summary counts all of them."""
    cold = _lines(_run(GRAPH, tmp_path, jobs="2").stderr)
    steps = [ln for ln in cold if "compiling" in ln]
    assert sorted(ln.split(" (")[-1] for ln in steps) == ["cumsum)", "executor)"]
    assert [ln.split()[4] for ln in steps] == ["1/2", "2/2"]
    assert cold[-1].startswith("minigraph: compiled 2 CPU kernels")
    assert _lines(_run(GRAPH, tmp_path, jobs="2").stderr) == []


def test_quiet_flag_hides_the_progress(tmp_path):
    assert _lines(_run(GRAPH, tmp_path, quiet="1").stderr) == []
    # unset, a pipe (not a terminal) gets no progress either
    env = {k: v for k, v in os.environ.items() if k != "MINIGRAPH_QUIET"}
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "n2"), MINIGRAPH_CACHE_DIR=str(tmp_path / "m2"))
    res = subprocess.run([sys.executable, "-c", GRAPH], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and _lines(res.stderr) == []


def test_warmup_leaves_a_later_plan_only_its_loop_to_compile(tmp_path):
    out = _run("", tmp_path, "0", "warmup", "--ops", "CUMSUM", "--builds", "serial")
    assert "CPU kernel forms ready" in out.stdout and "compiled" in out.stdout
    assert any("minigraph warmup: [" in ln and "cumsum" in ln for ln in _lines(out.stderr))
    later = [ln for ln in _lines(_run(GRAPH, tmp_path).stderr) if "compiling" in ln]
    assert later == ["minigraph: compiling CPU kernels 2/2 (executor)"]


def test_warmup_with_compile_workers_leaves_a_plan_only_its_loop(tmp_path):
    out = _run("", tmp_path, "0", "warmup", "--ops", "CUMSUM,FILL,TRI", "--builds", "serial", jobs="2")
    assert "CPU kernel forms ready" in out.stdout
    assert any("minigraph warmup: compiled" in ln for ln in _lines(out.stderr))
    later = [ln for ln in _lines(_run(GRAPH, tmp_path).stderr) if "compiling" in ln]
    assert later == ["minigraph: compiling CPU kernels 2/2 (executor)"]


def test_warmup_refuses_what_it_cannot_do(tmp_path):
    from minigraph.tools import cli, warmup

    with pytest.raises(mg.MinigraphError, match="unknown op NOPE"):
        warmup.warmup("cpu", ["NOPE"])
    with pytest.raises(mg.MinigraphError, match="builds must be"):
        warmup.warmup("cpu", ["CUMSUM"], ["fast"])
    with pytest.raises(mg.MinigraphError, match="'cpu' or 'cuda'"):
        warmup.warmup("metal", ["CUMSUM"])
    assert cli.main(["warmup", "--backend", "cuda"]) == 2    # numba-cuda keeps no disk cache


@pytest.mark.parametrize("T,K,gate,form", [(1, 1, 1, "GDN_DECODE"), (70, 1, 1, "GDN_CHUNKED"),
                                           (70, 1, 4, "GDN_CHUNKED"), (5, 1, 1, "GDN_RECURRENT"),
                                           (70, 17, 4, "GDN_RECURRENT")])
def test_gated_delta_net_plans_pick_one_form(T, K, gate, form):
    S, H = 4, 2
    ctx = mg.Context()
    f = lambda *ne: ctx.new_tensor_4d(mg.TYPE_F32, *ne)  # noqa: E731
    n = ctx.gated_delta_net(f(S, H, T, 1), f(S, H, T, 1), f(S, H, T, 1), f(gate, H, T, 1), f(1, H, T, 1),
                            f(S, S, H, 1), K)
    assert node_variant(kernels_for("cpu")["GATED_DELTA_NET"], n, "parallel")[0] is getattr(gdn_cpu, form)


def test_mul_mat_picks_its_form_and_the_tiled_form_ignores_layout():
    ctx = mg.Context()
    a = ctx.new_tensor_2d(mg.TYPE_F32, 8, 16)
    kern = kernels_for("cpu")["MUL_MAT"]
    dot = node_variant(kern, ctx.mul_mat(a, ctx.new_tensor_2d(mg.TYPE_F32, 8, 2)), "serial")
    assert dot[0] is linalg_cpu.mul_mat_dot and dot[2] == "FfF"          # C layouts; src0 a storage slot
    half = node_variant(kern, ctx.mul_mat(ctx.new_tensor_2d(mg.TYPE_F16, 8, 16),
                                          ctx.new_tensor_2d(mg.TYPE_F32, 8, 2)), "serial")
    assert half[0] is linalg_cpu.mul_mat_dot and half[2] == "FhF"        # F16 weights read as stored
    wide = node_variant(kern, ctx.mul_mat(a, ctx.new_tensor_2d(mg.TYPE_F32, 8, 9)), "serial")
    assert wide[0] is linalg_cpu.mul_mat_dot                              # any N on src0 rows of adjacent values
    # src0 ne [8, 16, 4] with its values 16 bytes apart (not transposed in ggml's sense: nb0 < nb1)
    at = ctx.permute(ctx.new_tensor_3d(mg.TYPE_F32, 4, 8, 16), 2, 0, 1, 3)
    bt = ctx.permute(ctx.new_tensor_3d(mg.TYPE_F32, 9, 8, 4), 1, 0, 2, 3)   # ne [8, 9, 4], strided
    tiled = node_variant(kern, ctx.mul_mat(at, bt), "serial")
    plain = node_variant(kern, ctx.mul_mat(at, ctx.new_tensor_3d(mg.TYPE_F32, 8, 9, 4)), "serial")
    assert tiled[0] is linalg_cpu.mul_mat_tiled and tiled == plain and tiled[2] == "fff"


@njit
def _add_one(dst, a):
    for i in range(dst.shape[0]):
        dst[i] = a[i] + 1


def test_call_kernel_refuses_a_kernel_not_compiled_for_the_call():
    """The executor's native calls are checked at typing time: types the kernel was not
    compiled for are a TypingError, never a call with a mismatched ABI."""
    f32 = types.Array(types.float32, 1, "C")
    _add_one.compile((f32, f32))
    cres = _add_one.overloads[(f32, f32)]
    addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)

    @njit
    def good(fp, d, a):
        program.call_kernel(_add_one, fp, d, a)

    @njit
    def bad(fp, d, a):
        program.call_kernel(_add_one, fp, d, a)

    d, a = np.zeros(3, np.float32), np.arange(3, dtype=np.float32)
    good(addr, d, a)
    assert d.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(TypingError, match="no compiled form"):
        bad(addr, np.zeros(3, np.float64), np.zeros(3, np.float64))
