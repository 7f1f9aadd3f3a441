"""Property tests: random chains of views, permutes, transposes, reshapes, copies, region writes
(ACC/SET, in place and not), broadcast elementwise ops and cumsum, computed on the CPU backend
and compared with the float64 reference for every graph output.

Also checks the memory planner never overwrites what the caller owns: after compute every leaf
holds what was set (unless the graph writes into it in place, in which case it holds what the
reference says), and every tensor passed to build_forward_expand equals the reference.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigraph as mg

CPU = mg.backend_cpu_init(2)
F32 = mg.TYPE_F32
TS = 4
RTOL = 1e-5

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

dims = st.integers(1, 4)


class Builder:
    """Builds one random graph step by step, remembering leafs, in-place roots and outputs."""

    def __init__(self, data):
        self.draw = data.draw
        self.ctx = mg.Context()
        self.rng = np.random.default_rng(self.draw(st.integers(0, 2**16), label="seed"))
        self.leafs = []        # (tensor, the numpy data it was given)
        self.written = set()   # id(root) of leafs the graph writes into on purpose
        self.outputs = []
        self.log = []

    # -- inputs ---------------------------------------------------------------------------------
    def leaf(self, ne, lo=-1.0, hi=1.0):
        data = self.rng.uniform(lo, hi, size=tuple(reversed(ne))).astype(np.float32)
        t = self.ctx.new_tensor_4d(F32, *ne).set_data(data).set_name(f"leaf{len(self.leafs)}")
        self.leafs.append((t, data))
        return t

    def source(self):
        """A contiguous leaf, or a window of a bigger leaf (so offsets and strides are odd)."""
        ne = [self.draw(dims, label="ne") for _ in range(4)]
        if not self.draw(st.booleans(), label="windowed source"):
            return self.leaf(ne)
        big = [n + self.draw(st.integers(0, 2), label="pad") for n in ne]
        return self.window(self.leaf(big), ne)

    # -- transforms -----------------------------------------------------------------------------
    def window(self, cur, want=None):
        """view_4d of a box inside cur (with optional steps in dims 1..3); dim 0 must have nb0 =
        element size for ggml_view_4d, so a permuted cur keeps a single column."""
        ne, nb = cur.ne, cur.nb
        w, start, step = [], [], []
        for i in range(4):
            if i == 0 and nb[0] != TS:
                k, n = 1, 1
            else:
                k = 1 if i == 0 else self.draw(st.integers(1, 2), label="step")
                hi_n = (ne[i] - 1) // k + 1
                n = min(want[i], hi_n) if want else self.draw(st.integers(1, hi_n), label="w")
            s = self.draw(st.integers(0, ne[i] - 1 - (n - 1) * k), label="start")
            w.append(n)
            start.append(s)
            step.append(k)
        offs = sum(s * b for s, b in zip(start, nb))
        v = self.ctx.view_4d(cur, *w, nb[1] * step[1], nb[2] * step[2], nb[3] * step[3], offs)
        self.log.append(f"view_4d {w} start={start} step={step}")
        return v

    def permute(self, cur):
        axes = self.draw(st.permutations([0, 1, 2, 3]), label="axes")
        self.log.append(f"permute {axes}")
        return self.ctx.permute(cur, *axes)

    def transpose(self, cur):
        self.log.append("transpose")
        return self.ctx.transpose(cur)

    def reshape(self, cur):
        if not mg.is_contiguous(cur):
            cur = self.ctx.cont(cur)
            self.log.append("cont (for reshape)")
        n = mg.nelements(cur)
        ne = []
        for _ in range(3):
            divs = [d for d in range(1, n + 1) if n % d == 0]
            d = self.draw(st.sampled_from(divs), label="factor")
            ne.append(d)
            n //= d
        ne.append(n)
        ne = list(self.draw(st.permutations(ne), label="order"))
        self.log.append(f"reshape_4d {ne}")
        if self.draw(st.booleans(), label="reshape or cont_4d"):
            return self.ctx.reshape_4d(cur, *ne)
        return self.ctx.cont_4d(cur, *ne)

    def cont(self, cur):
        self.log.append("cont")
        return self.ctx.cont(cur)

    def elementwise(self, cur):
        kind = self.draw(st.sampled_from(["add", "sub", "mul", "div", "neg", "sqr", "tanh", "scale"]), label="op")
        inplace = self.draw(st.booleans(), label="inplace")
        if kind in ("add", "sub", "mul", "div"):
            bne = [n if self.draw(st.booleans(), label="bcast") else 1 for n in cur.ne]
            lo = 0.5 if kind == "div" else -1.0
            if self.draw(st.booleans(), label="b permuted"):
                # the broadcast operand stored transposed, seen through a permute
                b = self.ctx.permute(self.leaf([bne[1], bne[0], bne[2], bne[3]], lo, 2.0), 1, 0, 2, 3)
            else:
                b = self.leaf(bne, lo, 2.0)
            args = (cur, b)
        elif kind == "scale":
            args = (cur, self.draw(st.sampled_from([0.5, -2.0, 3.0]), label="s"))
        else:
            args = (cur,)
        name = kind + ("_inplace" if inplace else "")
        self.log.append(f"{name} b.ne={list(args[1].ne) if len(args) > 1 and hasattr(args[1], 'ne') else ''}")
        out = getattr(self.ctx, name)(*args)
        if inplace:
            self.written.add(id(cur.root))
        return out

    def region(self, cur):
        """acc/set of a random block at a random 4-D offset inside a contiguous destination."""
        dst = cur if mg.is_contiguous(cur) else self.ctx.cont(cur)
        w = [self.draw(st.integers(1, n), label="block") for n in dst.ne]
        start = [self.draw(st.integers(0, n - m), label="at") for n, m in zip(dst.ne, w)]
        b = self.leaf(w)
        offs = sum(s * nb for s, nb in zip(start, dst.nb))
        kind = self.draw(st.sampled_from(["acc", "set", "acc_inplace", "set_inplace"]), label="region op")
        self.log.append(f"{kind} block={w} at={start}")
        out = getattr(self.ctx, kind)(dst, b, dst.nb[1], dst.nb[2], dst.nb[3], offs)
        if kind.endswith("_inplace"):
            self.written.add(id(dst.root))
        return out

    def cumsum(self, cur):
        dim = self.draw(st.integers(0, 3), label="dim")
        self.log.append(f"cumsum dim={dim}")
        return self.ctx.cumsum(cur, dim)

    def output(self, t):
        self.outputs.append(t)


STEPS = ["window", "permute", "transpose", "reshape", "cont", "elementwise", "region", "cumsum"]


def check(bld: Builder) -> None:
    ctx = bld.ctx
    gf = ctx.new_graph()
    for o in bld.outputs:
        mg.build_forward_expand(gf, o)
    leaf_ids = {id(t) for t in gf.leafs}
    # the reference first: the CPU run may write into leafs on purpose (in-place ops)
    ref = mg.reference_compute(gf)
    want = [ref[o] for o in bld.outputs]
    CPU.graph_compute(gf)
    trail = " -> ".join(bld.log)
    for i, (o, w) in enumerate(zip(bld.outputs, want)):
        got = o.numpy()
        assert got.shape == w.shape, trail
        atol = RTOL * max(1.0, float(np.abs(w).max(initial=0.0)))
        np.testing.assert_allclose(got, w, rtol=RTOL, atol=atol, err_msg=f"output {i} {o!r}: {trail}")
    for leaf, data in bld.leafs:
        if id(leaf) not in leaf_ids:
            continue
        got = leaf.numpy().reshape(data.shape)
        if id(leaf) in bld.written:
            w = ref[leaf].reshape(data.shape)
            np.testing.assert_allclose(got, w, rtol=RTOL, atol=RTOL * max(1.0, float(np.abs(w).max())),
                                       err_msg=f"written leaf {leaf.name}: {trail}")
        else:
            np.testing.assert_array_equal(got, data, err_msg=f"leaf {leaf.name} was overwritten: {trail}")


@SETTINGS
@given(st.data())
def test_random_view_chains_match_reference(data):
    bld = Builder(data)
    cur = bld.source()
    n_steps = data.draw(st.integers(1, 6), label="n_steps")
    for _ in range(n_steps):
        step = data.draw(st.sampled_from(STEPS), label="step")
        cur = getattr(bld, step)(cur)
        if data.draw(st.integers(0, 3), label="mark output") == 0:
            bld.output(cur)
    # a view can be an output too, but give the chain a computed end as well
    if cur.op in (None, "VIEW", "PERMUTE", "TRANSPOSE", "RESHAPE") or data.draw(st.booleans(), label="final cont"):
        cur = bld.cont(cur)
    bld.output(cur)
    check(bld)


@SETTINGS
@given(st.data())
def test_several_branches_share_one_buffer(data):
    """Several independent chains off shared sources in one graph: the planner reuses memory
    between branches, and no output or leaf may be clobbered by it."""
    bld = Builder(data)
    src = bld.source()
    for _ in range(data.draw(st.integers(2, 4), label="branches")):
        cur = src
        for _ in range(data.draw(st.integers(1, 4), label="n_steps")):
            step = data.draw(st.sampled_from(["window", "permute", "transpose", "reshape", "cont",
                                              "elementwise", "cumsum"]), label="step")
            if step == "elementwise":
                # in place on the shared source would make branch results order-dependent
                kind = data.draw(st.sampled_from(["add", "mul", "neg", "scale"]), label="op")
                if kind in ("add", "mul"):
                    b = bld.leaf([n if data.draw(st.booleans(), label="bcast") else 1 for n in cur.ne])
                    cur = getattr(bld.ctx, kind)(cur, b)
                elif kind == "neg":
                    cur = bld.ctx.neg(cur)
                else:
                    cur = bld.ctx.scale(cur, 0.5)
                bld.log.append(kind)
            else:
                cur = getattr(bld, step)(cur)
        if cur.op in (None, "VIEW", "PERMUTE", "TRANSPOSE", "RESHAPE"):
            cur = bld.cont(cur)
        bld.output(cur)
        bld.log.append("|")
    check(bld)


@SETTINGS
@given(st.data())
def test_region_writes_into_views_of_leafs(data):
    """acc/set (in place and not) into a contiguous window of a leaf, at random 4-D offsets;
    in place writes reach the leaf's memory exactly where the reference says."""
    bld = Builder(data)
    ne = [data.draw(dims, label="ne") for _ in range(4)]
    big = bld.leaf([ne[0], ne[1], ne[2], ne[3] + data.draw(st.integers(0, 2), label="extra rows")])
    skip = data.draw(st.integers(0, big.ne[3] - ne[3]), label="skip")
    dst = bld.ctx.view_4d(big, *ne, big.nb[1], big.nb[2], big.nb[3], skip * big.nb[3])
    assert mg.is_contiguous(dst)
    cur = dst
    for _ in range(data.draw(st.integers(1, 3), label="writes")):
        cur = bld.region(cur)
        if data.draw(st.booleans(), label="mark output"):
            bld.output(cur)
    bld.output(bld.ctx.scale(cur, 1.0))
    check(bld)


@SETTINGS
@given(st.data())
def test_dag_of_same_shape_ops_reuses_memory_safely(data):
    """A random DAG of same-shape ops whose sources are picked from all earlier results: the
    planner runs elementwise nodes in place on dying sources and reuses freed ranges; results
    read again later, and the outputs, must survive that."""
    bld = Builder(data)
    pool = [bld.cont(bld.source())]
    for _ in range(data.draw(st.integers(2, 8), label="n_nodes")):
        i = data.draw(st.integers(0, len(pool) - 1), label="src0")
        a = pool[-1 - i] if data.draw(st.booleans(), label="latest") else pool[i]
        kind = data.draw(st.sampled_from(["add", "mul", "sub", "neg", "sqr", "tanh", "scale", "cumsum",
                                          "transpose twice", "acc"]), label="op")
        ctx = bld.ctx
        if kind in ("add", "mul", "sub"):
            if data.draw(st.booleans(), label="b from pool"):
                b = data.draw(st.sampled_from(pool), label="b")
            else:
                b = bld.leaf([n if data.draw(st.booleans(), label="bcast") else 1 for n in a.ne])
            y = getattr(ctx, kind)(a, b)
        elif kind == "scale":
            y = ctx.scale(a, 0.75)
        elif kind == "cumsum":
            y = ctx.cumsum(a, data.draw(st.integers(0, 3), label="dim"))
        elif kind == "transpose twice":
            y = ctx.cont(ctx.transpose(ctx.cont(ctx.transpose(a))))
        elif kind == "acc":
            y = bld.region(a) if mg.is_contiguous(a) else ctx.neg(a)
        else:
            y = getattr(ctx, kind)(a)
        bld.log.append(f"{kind}(#{pool.index(a)})")
        pool.append(y)
        if data.draw(st.integers(0, 2), label="mark output") == 0:
            bld.output(y)
    bld.output(pool[-1])
    check(bld)


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_cumsum_every_dim_on_permuted_input(dim):
    ctx = mg.Context()
    rng = np.random.default_rng(dim)
    arr = rng.uniform(-1, 1, size=(2, 3, 4, 5)).astype(np.float32)
    x = ctx.permute(ctx.from_numpy(arr), 2, 0, 3, 1)
    y = ctx.cumsum(x, dim)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    want = np.cumsum(x.numpy().astype(np.float64), axis=3 - dim)
    np.testing.assert_allclose(mg.reference_compute(gf)[y], want, rtol=1e-12)
    CPU.graph_compute(gf)
    np.testing.assert_allclose(y.numpy(), want, rtol=RTOL, atol=RTOL)
