"""CPU kernels of the layout (CONT, DUP, CPY, PAD, REPEAT, CONCAT, GET_ROWS) and write (ACC, SET)
families against the ops' float64 references, on contiguous and strided views.

Each node is built with the public API; its kernel runs directly on numpy (ne3, ne2, ne1, ne0)
views over private copies of the storage roots, each wrapped in sentinel bytes. The whole root of
dst is compared with the reference's memory, so elements outside dst must stay untouched too.
"""
import numpy as np
import pytest

import minigraph as mg
import minigraph.backends.cpu  # noqa: F401  (registers the kernels)
from minigraph.backends.cpu.backend import _storage_codes
from minigraph.core import dtypes
from minigraph.core.registry import KERNELS, OPS

TOL = 1e-6  # copies are exact; ACC adds two float32s
GUARD = 64  # sentinel bytes before and after every root
SENTINEL = 0xA5


class Memory:
    """One uint8 buffer per storage root, filled from the tensors' data."""

    def __init__(self):
        self.bufs = {}

    def _root_buf(self, root):
        if id(root) not in self.bufs:
            buf = np.full(GUARD + mg.nbytes(root) + GUARD, SENTINEL, np.uint8)
            buf[GUARD:GUARD + mg.nbytes(root)] = 0
            self.bufs[id(root)] = buf
            if root.has_data():
                self.view(root)[...] = root.numpy().reshape(tuple(reversed(root.ne)))
        return self.bufs[id(root)]

    def view(self, t):
        """The kernel's view of t: shape reversed(ne), byte strides reversed(nb), over t's root."""
        buf = self._root_buf(t.root)
        offs = GUARD + (t.view_offs if t.view_src is not None else 0)
        dt = np.int32 if t.type == mg.TYPE_I32 else np.float32
        flat = buf[offs:offs + (len(buf) - offs) // 4 * 4].view(dt)
        return np.lib.stride_tricks.as_strided(flat, shape=tuple(reversed(t.ne)), strides=tuple(reversed(t.nb)))

    def root_flat(self, t):
        root = t.root
        dt = np.int32 if root.type == mg.TYPE_I32 else np.float32
        return self.bufs[id(root)][GUARD:GUARD + mg.nbytes(root)].view(dt)

    def guards_intact(self):
        return all(np.all(b[:GUARD] == SENTINEL) and np.all(b[-GUARD:] == SENTINEL) for b in self.bufs.values())


def run_kernel(node, build):
    """Run node's CPU kernel (build: 'serial' or 'parallel') on fresh memory; return the Memory."""
    k = KERNELS["cpu"][node.op]
    assert k.supports is None or k.supports(node) is None
    mem = Memory()
    srcs = [mem.view(s) for s in node.src]
    dst = mem.view(node)
    params = [node.op_params[p] for p in OPS[node.op].params]
    getattr(k.fn, build)(dst, *srcs, *params, *_storage_codes(node, k.storage_slots), *k.extra)
    assert mem.guards_intact(), "kernel wrote outside the tensors' memory"
    return mem


def check(node):
    """Serial and parallel builds both match the reference, over the whole of dst's root."""
    res = mg.reference_compute(node)
    want_root = res.flat(node)
    for build in ("serial", "parallel"):
        mem = run_kernel(node, build)
        got = mem.view(node)
        np.testing.assert_allclose(got, res.view4(node), rtol=TOL, atol=TOL, err_msg=build)
        np.testing.assert_allclose(mem.root_flat(node), want_root[:mem.root_flat(node).size], rtol=TOL, atol=TOL,
                                   err_msg=f"{build}: root memory outside dst")


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def irand(rng, *shape):
    return rng.integers(-1000, 1000, shape).astype(np.int32)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- CONT / DUP / CPY -------------------------------------------------------------------------

@pytest.mark.parametrize("make", [rand, irand], ids=["f32", "i32"])
def test_cont_views(rng, make):
    ctx = mg.Context()
    a = ctx.from_numpy(make(rng, 2, 3, 5, 7))             # ne = [7, 5, 3, 2]
    check(ctx.cont(a))                                     # contiguous
    check(ctx.cont(ctx.permute(a, 1, 0, 2, 3)))            # swap ne0/ne1
    check(ctx.cont(ctx.permute(a, 2, 0, 3, 1)))            # full permutation
    check(ctx.cont_1d(ctx.permute(a, 2, 0, 3, 1), 210))    # one dst row spans all of a's dims
    check(ctx.cont(ctx.transpose(a)))
    check(ctx.dup(ctx.transpose(a)))
    # view with an offset and strided rows: a [4 x 3] window starting at element (1, 1)
    v = ctx.view_3d(a, 4, 3, 2, a.nb[1], a.nb[2], a.nb[1] + a.nb[0])
    check(ctx.cont(v))
    check(ctx.dup(v))


def test_cont_new_shape(rng):
    ctx = mg.Context()
    a = ctx.from_numpy(rand(rng, 4, 6, 5))                # ne = [5, 6, 4]
    t = ctx.transpose(a)                                   # ne = [6, 5, 4], non-contiguous
    check(ctx.cont_1d(t, 120))
    check(ctx.cont_2d(t, 8, 15))
    check(ctx.cont_3d(t, 3, 10, 4))
    check(ctx.cont_4d(t, 2, 3, 4, 5))


def test_cpy_into_strided_view_of_bigger_tensor(rng):
    ctx = mg.Context()
    src = ctx.from_numpy(rand(rng, 3, 4, 6))               # ne = [6, 4, 3]: 72 elements
    big = ctx.from_numpy(rand(rng, 4, 10, 16))             # ne = [16, 10, 4]
    # [6, 4, 3] window of big, rows every 16 elements, planes every 160, at element (2, 3, 1)
    offs = 2 * big.nb[0] + 3 * big.nb[1] + 1 * big.nb[2]
    dstv = ctx.view_3d(big, 6, 4, 3, big.nb[1], big.nb[2], offs)
    check(ctx.cpy(src, dstv))
    check(ctx.cpy(ctx.transpose(ctx.reshape_2d(src, 12, 6)), dstv))   # non-contiguous src too
    # different shape, same count: [72] -> window
    check(ctx.cpy(ctx.reshape_1d(src, 72), dstv))


def test_cpy_converts_types(rng):
    ctx = mg.Context()
    ai = ctx.from_numpy(irand(rng, 3, 5))
    bf = ctx.from_numpy(np.zeros((5, 3), np.float32))
    check(ctx.cpy(ai, bf))                                 # i32 -> f32, reshaped
    af = ctx.from_numpy(rng.integers(-50, 50, (3, 5)).astype(np.float32))
    bi = ctx.from_numpy(np.zeros((3, 5), np.int32))
    check(ctx.cpy(ctx.transpose(af), ctx.reshape_2d(bi, 3, 5)))  # f32 (integral values) -> i32


# -- PAD / REPEAT / CONCAT --------------------------------------------------------------------

@pytest.mark.parametrize("ps", [(0, 0, 0, 0), (3, 0, 0, 0), (1, 2, 0, 1), (0, 0, 2, 0)])
def test_pad(rng, ps):
    ctx = mg.Context()
    a = ctx.from_numpy(rand(rng, 2, 3, 4, 5))
    check(ctx.pad(a, *ps))
    check(ctx.pad(ctx.permute(a, 1, 2, 0, 3), *ps))        # non-contiguous input


@pytest.mark.parametrize("make", [rand, irand], ids=["f32", "i32"])
def test_repeat(rng, make):
    ctx = mg.Context()
    a = ctx.from_numpy(make(rng, 1, 2, 3, 4))              # ne = [4, 3, 2, 1]
    check(ctx.repeat(a, ctx.new_tensor_4d(mg.TYPE_F32, 8, 6, 2, 3)))
    check(ctx.repeat_4d(ctx.transpose(a), 9, 8, 4, 2))     # transposed source
    row = ctx.from_numpy(make(rng, 4))                     # broadcast a row over rows and planes
    check(ctx.repeat_4d(row, 4, 5, 3, 2))


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
@pytest.mark.parametrize("make", [rand, irand], ids=["f32", "i32"])
def test_concat(rng, make, dim):
    ctx = mg.Context()
    ne_a, ne_b = [4, 3, 2, 2], [4, 3, 2, 2]
    ne_b[dim] = 5
    a = ctx.from_numpy(make(rng, *reversed(ne_a)))
    b = ctx.from_numpy(make(rng, *reversed(ne_b)))
    check(ctx.concat(a, b, dim))
    # non-contiguous operands: permute both the same way, concat along the moved dim
    pa, pb = ctx.permute(a, 1, 0, 2, 3), ctx.permute(b, 1, 0, 2, 3)
    check(ctx.concat(pa, pb, {0: 1, 1: 0}.get(dim, dim)))


# -- GET_ROWS ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [rand, irand], ids=["f32", "i32"])
def test_get_rows(rng, make):
    ctx = mg.Context()
    table = ctx.from_numpy(make(rng, 2, 3, 7, 5))         # ne = [5, 7, 3, 2]
    idx = ctx.from_numpy(rng.integers(0, 7, (2, 6, 4)).astype(np.int32))  # ne = [4, 6, 2]: ne1, ne2 broadcast
    check(ctx.get_rows(table, idx))
    flat = ctx.from_numpy(make(rng, 9, 6))                 # 2-D table, repeated rows
    check(ctx.get_rows(flat, ctx.from_numpy(np.array([8, 0, 3, 3, 8], np.int32))))
    # strided table (transposed) and strided indices (a column of a matrix)
    idx2 = ctx.from_numpy(rng.integers(0, 6, (5, 3)).astype(np.int32))
    col = ctx.view_2d(idx2, 1, 5, idx2.nb[1], idx2.nb[0])  # idx2[:, 1]: ne = [1, 5], stride 3 elements
    check(ctx.get_rows(ctx.transpose(flat), ctx.transpose(col)))


@pytest.mark.parametrize("bad", [7, -1, 1 << 30])
def test_get_rows_out_of_range(rng, bad):
    ctx = mg.Context()
    table = ctx.from_numpy(rand(rng, 7, 5))
    node = ctx.get_rows(table, ctx.from_numpy(np.array([0, 3, bad, 1], np.int32)))
    for build in ("serial", "parallel"):
        with pytest.raises(IndexError, match="get_rows: row index out of range"):
            run_kernel(node, build)


# -- ACC / SET --------------------------------------------------------------------------------

def _region_cases(ctx, rng, op, inplace):
    a = ctx.from_numpy(rand(rng, 2, 3, 32, 32))            # ne = [32, 32, 3, 2]
    b = ctx.from_numpy(rand(rng, 2, 3, 16, 16))            # a 16x16 block per plane
    fn = getattr(ctx, op + ("_inplace" if inplace else ""))
    offs = 4 * a.nb[0] + 8 * a.nb[1]                       # block at (i0=4, i1=8) of every plane
    yield fn(a, b, a.nb[1], a.nb[2], a.nb[3], offs)
    # 3-D blocks of b's planes interleaved: use rows every 2 rows of a, planes 3 apart in ne2*ne3
    b2 = ctx.from_numpy(rand(rng, 2, 1, 8, 16))
    yield fn(a, b2, 2 * a.nb[1], a.nb[2], a.nb[3], 16 * a.nb[0] + a.nb[2])
    # non-contiguous b (transposed block)
    yield fn(a, ctx.transpose(b), a.nb[1], a.nb[2], a.nb[3], offs)
    # region rows longer than a's rows: it wraps across rows of the flat memory
    b3 = ctx.from_numpy(rand(rng, 2, 3, 4, 40))
    yield fn(a, b3, 48 * a.nb[0], a.nb[2], a.nb[3], 0)
    # one long row from element 1000 to 3499: crosses plane (1024, 2048) and ne3 (3072) boundaries
    yield fn(a, ctx.from_numpy(rand(rng, 2500)), a.nb[1], a.nb[2], a.nb[3], 1000 * a.nb[0])


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
@pytest.mark.parametrize("op", ["acc", "set"])
def test_acc_set_4d(rng, op, inplace):
    ctx = mg.Context()
    for node in _region_cases(ctx, rng, op, inplace):
        assert (node.view_src is not None) == inplace
        check(node)


def test_set_1d_2d(rng):
    ctx = mg.Context()
    a = ctx.from_numpy(rand(rng, 6, 10))
    check(ctx.set_1d(a, ctx.from_numpy(rand(rng, 7)), 13 * a.nb[0]))
    check(ctx.set_2d_inplace(a, ctx.from_numpy(rand(rng, 3, 4)), a.nb[1], 2 * a.nb[1] + 5 * a.nb[0]))


def test_acc_region_checked_in_kernel(rng):
    """A region the builder would refuse is refused by the kernel too (never writes outside dst)."""
    ctx = mg.Context()
    node = ctx.acc(ctx.from_numpy(rand(rng, 4, 8)), ctx.from_numpy(rand(rng, 2, 8)), 32, 64, 64, 0)
    node.op_params["offset"] = 3 * 32                     # tamper: last row would be row 4 of 4
    for build in ("serial", "parallel"):
        with pytest.raises(IndexError):
            run_kernel(node, build)


# -- builders refuse bad input ----------------------------------------------------------------

def test_builders_refuse(rng):
    ctx = mg.Context()
    a = ctx.from_numpy(rand(rng, 4, 8))                    # ne = [8, 4]
    b = ctx.from_numpy(rand(rng, 2, 8))
    with pytest.raises(mg.MinigraphError, match="past"):
        ctx.acc(a, b, a.nb[1], a.nb[2], a.nb[3], 3 * a.nb[1])         # region past the end
    with pytest.raises(mg.MinigraphError, match="past"):
        ctx.set_1d(a, ctx.from_numpy(rand(rng, 5)), 30 * a.nb[0])
    with pytest.raises(mg.MinigraphError, match="overlaps itself"):
        ctx.set(a, b, 4 * a.nb[0], a.nb[2], a.nb[3], 0)              # rows of 8 every 4 elements
    with pytest.raises(mg.MinigraphError):
        ctx.acc(a, b, a.nb[1], a.nb[2], a.nb[3], 2)                   # offset not element-aligned
    with pytest.raises(mg.MinigraphError, match="contiguous"):
        ctx.acc(ctx.transpose(a), b, a.nb[1], a.nb[2], a.nb[3], 0)    # destination not contiguous
    with pytest.raises(mg.MinigraphError, match="all dims but"):
        ctx.concat(a, ctx.from_numpy(rand(rng, 3, 5)), 0)             # ne1 4 vs 3
    with pytest.raises(mg.MinigraphError, match="same type"):
        ctx.concat(a, ctx.from_numpy(irand(rng, 4, 8)), 1)
    with pytest.raises(mg.MinigraphError, match="i32"):
        ctx.get_rows(a, ctx.from_numpy(np.array([0.0, 1.0], np.float32)))  # f32 indices
    with pytest.raises(mg.MinigraphError):
        ctx.repeat(a, ctx.new_tensor_2d(mg.TYPE_F32, 12, 4))         # 12 not a multiple of 8
    with pytest.raises(mg.MinigraphError):
        ctx.cpy(a, ctx.new_tensor_1d(mg.TYPE_F32, 31))               # element counts differ
    with pytest.raises(mg.MinigraphError, match="contiguous"):
        ctx.reshape_2d(ctx.transpose(a), 8, 4)                       # reshape of a non-contiguous view
    with pytest.raises(mg.MinigraphError, match="contiguous"):
        ctx.reshape(ctx.permute(a, 1, 0, 2, 3), a)


def test_views_have_no_kernels():
    for op in ("VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"):
        assert op not in KERNELS["cpu"]


@pytest.mark.parametrize("type_", [mg.TYPE_F16, mg.TYPE_BF16])
def test_write_half_types_rescale_byte_params(rng, type_):
    """ACC/SET byte params count bytes of the node's type; the f32 kernel gets them rescaled."""
    ctx = mg.Context()
    a = ctx.new_tensor_2d(type_, 8, 4).set_data(rand(rng, 4, 8))
    b = ctx.new_tensor_2d(type_, 3, 2).set_data(rand(rng, 2, 3))
    node = ctx.acc(a, b, a.nb[1], a.nb[2], a.nb[3], a.nb[1] + 2 * a.nb[0])
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, node)
    ref = mg.reference_compute(gf)[node]
    mg.backend_cpu_init(1).graph_compute(gf)
    np.testing.assert_allclose(node.numpy().astype(np.float64), ref, rtol=1e-2, atol=1e-2)


def test_large_flat_copies_stream_and_stay_exact():
    """Contiguous f32 copies of STREAM_COPY_BYTES or more go through 64-byte non-temporal stores
    where a block is whole aligned lines, ordinary stores elsewhere: an aligned destination with a
    ragged last block, a misaligned one, and int32 (never streamed) all copy exactly."""
    from minigraph.backends.cpu.layout import FLAT_BLOCK, STREAM_COPY_BYTES, cpy, logical_copy
    from minigraph.core.buffer import aligned_zeros
    n = STREAM_COPY_BYTES // 4 + FLAT_BLOCK // 2 + 7          # the last block neither whole nor a multiple of 16
    src = np.random.default_rng(0).standard_normal(n + 1).astype(np.float32)
    for shift in (0, 1):                                       # 64-byte aligned, then 4 bytes off
        dst = aligned_zeros(4 * (n + 1)).view(np.float32)[shift:shift + n].reshape(1, 1, 1, n)
        cpy.parallel(dst, src[1:].reshape(1, 1, 1, n), dst, dtypes.TYPE_F32, dtypes.TYPE_F32, dtypes.TYPE_F32)
        np.testing.assert_array_equal(dst.reshape(-1), src[1:])
    xi = np.arange(n, dtype=np.int32).reshape(1, 1, 1, n)
    yi = np.zeros_like(xi)
    logical_copy.parallel(yi, xi, dtypes.TYPE_I32, dtypes.TYPE_I32)
    np.testing.assert_array_equal(yi, xi)
