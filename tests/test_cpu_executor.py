"""The CPU backend's planning and execution: memory plan, in-place reuse, plan cache, f16/bf16,
the compiled program's disk cache, errors from kernels."""
import os
import subprocess
import sys

import numpy as np
import pytest

import minigraph as mg
from minigraph.memory.alloc import plan_memory

CPU = mg.backend_cpu_init(2)


def _chain(n, size=16):
    ctx = mg.Context()
    x0 = ctx.from_numpy(np.arange(size, dtype=np.float32))
    b = ctx.from_numpy(np.ones(size, np.float32))
    x = x0
    for _ in range(n):
        x = ctx.add(x, b)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, x)
    return ctx, gf, x0, b, x


def test_chain_reuses_memory_and_keeps_inputs():
    ctx, gf, x0, b, x = _chain(200)
    plan = plan_memory(gf, can_inplace=lambda n: True)
    assert plan.size <= 128  # one 64-byte slot, reused in place by every add
    CPU.graph_compute(gf)
    assert np.array_equal(x.numpy(), np.arange(16) + 200.0)
    assert np.array_equal(x0.numpy(), np.arange(16))  # inputs are never overwritten
    assert np.array_equal(b.numpy(), np.ones(16))


def test_outputs_survive_and_intermediates_share():
    ctx = mg.Context()
    a = ctx.from_numpy(np.random.rand(64).astype(np.float32))
    y1 = ctx.exp(a)           # an output in the middle of the graph
    y2 = ctx.sqr(ctx.add(y1, y1))
    y3 = ctx.neg(ctx.mul(y2, y2))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y1)
    mg.build_forward_expand(gf, y3)
    CPU.graph_compute(gf)
    ref = mg.reference_compute(gf)
    assert np.allclose(y1.numpy(), ref[y1]) and np.allclose(y3.numpy(), ref[y3], rtol=1e-5)
    plan = CPU.plan(gf).memory
    assert len(set(plan.offsets.values())) < len(plan.roots)  # something shared memory


def test_plan_is_cached_and_replanned_on_change():
    ctx, gf, x0, b, x = _chain(5)
    CPU.graph_compute(gf)
    p1 = CPU.plan(gf)
    x0.set_data(np.zeros(16, np.float32))
    CPU.graph_compute(gf)
    assert CPU.plan(gf) is p1 and np.array_equal(x.numpy(), np.full(16, 5.0))
    y = ctx.scale(x, 2.0)
    mg.build_forward_expand(gf, y)
    CPU.graph_compute(gf)
    assert CPU.plan(gf) is not p1 and np.array_equal(y.numpy(), np.full(16, 10.0))


@pytest.mark.parametrize("type_", [mg.TYPE_F16, mg.TYPE_BF16])
def test_half_types_convert_on_load_and_store(type_):
    ctx = mg.Context()
    data = np.linspace(-3, 3, 24, dtype=np.float32).reshape(4, 6)
    a = ctx.new_tensor_2d(type_, 6, 4).set_data(data)
    b = ctx.from_numpy(np.full((1, 6), 0.5, np.float32))
    y = ctx.mul(ctx.exp(a), b)                    # half in, half out
    z = ctx.cpy(y, ctx.new_tensor_2d(mg.TYPE_F32, 6, 4))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, z)
    CPU.graph_compute(gf)
    assert y.type == type_
    ref = mg.reference_compute(gf)[z]
    assert np.allclose(z.numpy(), ref, rtol=1e-2)  # half precision
    assert np.allclose(z.numpy(), np.exp(a.numpy().astype(np.float64)) * 0.5, rtol=1e-2)


def test_kernel_error_names_the_node():
    ctx = mg.Context()
    table = ctx.from_numpy(np.random.rand(4, 8).astype(np.float32))
    idx = ctx.from_numpy(np.array([0, 9], np.int32))
    rows = ctx.get_rows(table, idx)
    with pytest.raises(mg.MinigraphError, match="GET_ROWS"):
        mg.compute(rows)


def test_missing_input_is_named():
    ctx = mg.Context()
    a = ctx.new_tensor_1d(mg.TYPE_F32, 4).set_name("weights")
    with pytest.raises(mg.MinigraphError, match="weights"):
        mg.compute(ctx.exp(a))


def test_second_process_loads_compiled_code_from_disk(tmp_path):
    """The generated executor and its kernels come from Numba's disk cache in a new process."""
    code = (
        "import numpy as np, minigraph as mg\n"
        "ctx = mg.Context(); a = ctx.from_numpy(np.ones(8, np.float32))\n"
        "y = ctx.sqrt(ctx.add(a, a))\n"
        "gf = ctx.new_graph(); mg.build_forward_expand(gf, y)\n"
        "cpu = mg.backend_cpu_init(1); cpu.graph_compute(gf)\n"
        "print(len(cpu.plan(gf).runner.stats.cache_hits), float(y.numpy()[0]))\n")
    env = dict(os.environ, MINIGRAPH_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split()[1] == second.stdout.split()[1] == repr(float(np.sqrt(np.float32(2.0))))
    assert int(first.stdout.split()[0]) == 0 and int(second.stdout.split()[0]) == 1
