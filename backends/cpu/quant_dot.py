"""ggml's vec_dot kernels for a quantized src0 row and a src1 row quantized to its vec_dot type
(`ggml_vec_dot_q4_0_q8_0` ... `ggml_vec_dot_q6_K_q8_K`), as Numba intrinsics written in LLVM IR.

`dot_q4_0(x, x_off, yq, y_off, yd, yd_off, ys, ys_off, nblk, table) -> float32` (and dot_q4_1 ...
dot_q6_k) is the dot of the nblk blocks at byte x_off of uint8 array x with one src1 row: yq its
int8 quants (element y_off on), yd its block scales (float32, element yd_off on), ys its extra
block data as bytes from byte ys_off (Q8_1: the block sums s as float32; Q8_K: the int16 bsums,
16 a block; Q8_0 under Q4_0 / Q5_0: 8 int32 a block, -8 or -16 times the sums of each 4 quants);
table: float16 bit pattern -> float32 (used where the CPU cannot convert halves).

Per block (Q4_0 ... Q8_0) or super-block (K-quants) the integer products go into 8 int32 lanes
exactly (quant_ir.dot4, with the K-quants' 6-bit or int8 sub-block scales applied in integer as
ggml's AVX2 code does), then 8 float accumulators gain lanes * (d_x * d_y); Q4_1 / Q5_1 add
m_x * s_y and the K-quants subtract dmin_x * d_y * (mins . bsums) in 4 more float lanes. The
result equals ggml's CPU to float32 rounding: the same integers, the same per-block scaling.

Every read stays inside the nblk blocks of x and the row's y data; the caller (backends/cpu/
quant.py) sizes those arrays from the tensors. Block bytes are little-endian, as in ggml.
"""
from __future__ import annotations

from typing import Callable

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from minigraph.core import dtypes as D

from minigraph.backends.cpu.quant_ir import (F32, I8, I16, I32, add_scaled_lanes, at, dot4, dot4_scaled, half, hsum,
                                             lane_splat16, load, madd16, nibbles, nibbles32, pairs, shuffle, splat,
                                             splat_const, vec)

V32 = vec(I8, 32)


def _q4_x(b, px, off):
    """32 nibbles from the 16 bytes at px + off: low nibbles (elements 0..15), then high."""
    return nibbles32(b, load(b, at(b, px, off), vec(I8, 16)))


def _q5_high(b, px, off):
    """16 for element e where bit e of the little-endian uint32 qh at px + off is set, else 0
    (byte e // 8 of qh spread to element e, tested against bit e % 8: ggml's bytes_from_bits_32)."""
    qh = load(b, at(b, px, off), vec(I8, 4))
    spread = shuffle(b, qh, qh, [e // 8 for e in range(32)])
    bit = b.and_(spread, ir.Constant(V32, [(1 << (e % 8)) - (256 if e % 8 == 7 else 0) for e in range(32)]))
    return b.select(b.icmp_unsigned("!=", bit, splat_const(I8, 32, 0)), splat_const(I8, 32, 16), splat_const(I8, 32, 0))


# Each block emitter: (builder, x block i8*, y block i8*, y's scale, ys block i8*, table) ->
# (<8 x i32> lanes, float scale of the lanes, float extra term or None).

def _q8_0(b, px, py, yd, ys, tab):
    x = load(b, at(b, px, 2), V32)
    return dot4(b, x, load(b, py, V32), True), b.fmul(half(b, px, tab), yd), None


def _q4_0(b, px, py, yd, ys, tab):
    # (q - 8) . y as q . y - 8 * (y's lane sums): the dot starts from -8 times those sums,
    # precomputed with src1; unsigned q skips the sign trick (two instructions of about twenty)
    lanes = dot4(b, _q4_x(b, px, 2), load(b, py, V32), False, load(b, ys, vec(I32, 8)))
    return lanes, b.fmul(half(b, px, tab), yd), None


def _q4_1(b, px, py, yd, ys, tab):
    lanes = dot4(b, _q4_x(b, px, 4), load(b, py, V32), False)
    return lanes, b.fmul(half(b, px, tab), yd), b.fmul(half(b, at(b, px, 2), tab), load(b, ys, F32))


def _q5_0(b, px, py, yd, ys, tab):
    x = b.or_(_q4_x(b, px, 6), _q5_high(b, px, 2))                # as Q4_0, offset 16
    lanes = dot4(b, x, load(b, py, V32), False, load(b, ys, vec(I32, 8)))
    return lanes, b.fmul(half(b, px, tab), yd), None


def _q5_1(b, px, py, yd, ys, tab):
    lanes = dot4(b, b.or_(_q4_x(b, px, 8), _q5_high(b, px, 4)), load(b, py, V32), False)
    return lanes, b.fmul(half(b, px, tab), yd), b.fmul(half(b, at(b, px, 2), tab), load(b, ys, F32))


def _k4_scales(b, p):
    """The 12 scale bytes at p (get_scale_min_k4 for all 8 groups at once, ggml's uint32 masks):
    <16 x i16>, lanes 0..7 the groups' 6-bit scales, 8..15 their mins."""
    u0, u1, u2 = (load(b, at(b, p, 4 * k), I32) for k in range(3))
    k1, k2, k3 = (ir.Constant(I32, m) for m in (0x3F3F3F3F, 0x0F0F0F0F, 0x03030303))
    sc_lo = b.and_(u0, k1)
    sc_hi = b.or_(b.and_(u2, k2), b.shl(b.and_(b.lshr(u0, ir.Constant(I32, 6)), k3), ir.Constant(I32, 4)))
    mn_lo = b.and_(u1, k1)
    mn_hi = b.or_(b.and_(b.lshr(u2, ir.Constant(I32, 4)), k2),
                  b.shl(b.and_(b.lshr(u1, ir.Constant(I32, 6)), k3), ir.Constant(I32, 4)))
    words = ir.Constant(vec(I32, 4), ir.Undefined)
    for k, w in enumerate((sc_lo, sc_hi, mn_lo, mn_hi)):
        words = b.insert_element(words, w, ir.Constant(I32, k))
    return b.zext(b.bitcast(words, vec(I8, 16)), vec(I16, 16))


def _k_mins(b, scales, ys):
    """<4 x i32>: lane j = min_2j * (bsums[4j] + bsums[4j+1]) + min_2j+1 * (bsums[4j+2] + bsums[4j+3])
    (the groups' mins times src1's group sums, exact; pair sums of 16 bsums fit int16)."""
    mins = shuffle(b, scales, scales, range(8, 16))
    return madd16(b, mins, pairs(b, load(b, ys, vec(I16, 16))))


def _qk(b, px, py, yd, ys, tab, five):
    """Q4_K (five False) / Q5_K: 8 groups of 32, q = nibble (+ 16 from qh bit g for Q5_K)."""
    scales = _k4_scales(b, at(b, px, 4))
    sc_dup = shuffle(b, scales, scales, list(range(8)) * 2)   # the 8 scales in both 128-bit halves
    qs = 48 if five else 16
    lanes = None
    for g in range(8):
        x = nibbles(b, load(b, at(b, px, qs + 32 * (g // 2)), V32), 4 * (g % 2))
        if five:
            hb = b.and_(b.lshr(load(b, at(b, px, 16), V32), splat_const(I8, 32, g)), splat_const(I8, 32, 1))
            x = b.or_(x, b.shl(hb, splat_const(I8, 32, 4)))
        part = dot4_scaled(b, x, load(b, at(b, py, 32 * g), V32), False, lane_splat16(b, sc_dup, g, g))
        lanes = part if lanes is None else b.add(lanes, part)
    dmin = b.fneg(b.fmul(half(b, at(b, px, 2), tab), yd))
    extra = b.fmul(b.sitofp(_k_mins(b, scales, ys), vec(F32, 4)), splat(b, dmin, 4))
    return lanes, b.fmul(half(b, px, tab), yd), extra


def _q4_k(b, px, py, yd, ys, tab):
    return _qk(b, px, py, yd, ys, tab, False)


def _q5_k(b, px, py, yd, ys, tab):
    return _qk(b, px, py, yd, ys, tab, True)


def _q6_k(b, px, py, yd, ys, tab):
    """Q6_K: two halves of 128; quarter k of a half takes the low (k < 2) or high nibbles of ql
    bytes 32 (k % 2) ... and bits 2k, 2k + 1 of the 32 qh bytes, minus 32; int8 scales per 16."""
    scales = b.sext(load(b, at(b, px, 192), vec(I8, 16)), vec(I16, 16))
    lanes = None
    for h in range(2):
        half_sc = shuffle(b, scales, scales, [8 * h + i for i in range(8)] * 2)   # scales 8h .. 8h + 7, twice
        qh = load(b, at(b, px, 128 + 32 * h), V32)
        for k in range(4):
            lo = nibbles(b, load(b, at(b, px, 64 * h + 32 * (k % 2)), V32), 4 * (k // 2))
            hi = b.shl(b.and_(b.lshr(qh, splat_const(I8, 32, 2 * k)), splat_const(I8, 32, 3)), splat_const(I8, 32, 4))
            x = b.sub(b.or_(lo, hi), splat_const(I8, 32, 32))
            sc = lane_splat16(b, half_sc, 2 * k, 2 * k + 1)   # scales 8h + 2k and 8h + 2k + 1
            part = dot4_scaled(b, x, load(b, at(b, py, 128 * h + 32 * k), V32), True, sc)
            lanes = part if lanes is None else b.add(lanes, part)
    return lanes, b.fmul(half(b, at(b, px, 208), tab), yd), None


# kind -> (block bytes, block length, ys bytes per block, float lanes of the extra term, emitter)
SPECS: dict[int, tuple[int, int, int, int, Callable]] = {
    D.TYPE_Q4_0: (18, 32, 32, 0, _q4_0), D.TYPE_Q4_1: (20, 32, 4, 1, _q4_1), D.TYPE_Q5_0: (22, 32, 32, 0, _q5_0),
    D.TYPE_Q5_1: (24, 32, 4, 1, _q5_1), D.TYPE_Q8_0: (34, 32, 0, 0, _q8_0), D.TYPE_Q4_K: (144, 256, 32, 4, _q4_k),
    D.TYPE_Q5_K: (176, 256, 32, 4, _q5_k), D.TYPE_Q6_K: (210, 256, 0, 0, _q6_k),
}


# Software prefetch of src0 ahead of the one-row dot (a hint: x86's prefetch never faults, so one
# past a row's or the tensor's end reads nothing). kind -> (bytes ahead, 64-byte lines a prefetch
# point, blocks between prefetch points). Sapphire Rapids, one thread, [4096, 14336] weights
# alternating with ggml's copy (the weights come from DRAM), the dot loop alone, ms: Q4_K
# 3.09-4.22 -> 1.96-2.05, Q5_K 3.29 -> 2.10, Q6_K 3.22 -> 2.74 (2048 ahead, 2 lines; 1024 or
# 1 line slower), Q4_0 3.11-3.51 -> 2.64-2.87, Q5_0 3.75 -> 3.17 (1024 ahead, a line every 64
# bytes); 4096 x 4096 from L3 Q4_K 0.55-0.58 -> 0.47-0.49, Q4_0 unchanged. Q8_0, Q4_1 and Q5_1
# gained nothing (Q8_0 lost at 2048) and take none. Zen 3 (session 16) measured no gain either way.
PREFETCH = {D.TYPE_Q4_K: (2048, 2, 1), D.TYPE_Q5_K: (2048, 2, 1), D.TYPE_Q6_K: (2048, 2, 1),
            D.TYPE_Q4_0: (1024, 1, 4), D.TYPE_Q5_0: (1024, 1, 2)}
# The ROWS-row dots prefetch the next group of rows instead: at block i of its rows m .. m + 3,
# the same block of rows m + 4 .. m + 7 (a line a row every PREFETCH_GROUP-th 32-element block;
# a K-quant super-block's lines every block). The hint above runs ahead inside each row, so the
# next group's rows, which the thread takes next, started cold (a prefetch past row m's end
# lands in row m + 1, already being read); one group ahead the lines arrive ~1 us before they
# are read. Ice Lake server VM, 2
# threads, the four-row dot over all rows of [4096, M] weights in one process, 15 alternating
# rounds, median ms, M = 14336 (two copies alternated: from DRAM) / 4096 (from L3): in-row hint
# (Q4_0, Q5_0) or none against the group every 2 blocks: Q4_0 2.92 -> 1.89 / 0.55 -> 0.47, Q8_0
# 3.81 -> 3.14 / 0.47 -> 0.43, Q4_1 4.52 -> 3.57, Q5_0 5.00 -> 4.10, Q5_1 5.41 -> 4.58 (every
# block or every 4: within a few % of every 2, mostly behind).
PREFETCH_GROUP = 2


def _prefetch_call(b, p):
    """llvm.prefetch of the line at i8* p: a read, kept in all levels, data cache."""
    fn = b.module.declare_intrinsic("llvm.prefetch.p0i8", fnty=ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32,
                                                                                               I32, I32]))
    b.call(fn, [p, I32(0), I32(3), I32(1)])


def _every(b, i, every, issue):
    """issue() at the blocks i that are multiples of `every` (a power of 2)."""
    if every == 1:
        issue()
    else:
        with b.if_then(b.icmp_unsigned("==", b.and_(i, i.type(every - 1)), i.type(0))):
            issue()


def _prefetch(b, kind, px, i, bsize):
    """The PREFETCH hint for block i of the row at px."""
    ahead, lines, every = PREFETCH[kind]

    def issue():
        for line in range(lines):
            _prefetch_call(b, at(b, px, b.add(b.mul(i, i.type(bsize)), i.type(ahead + 64 * line))))
    _every(b, i, every, issue)


def _prefetch_group(b, pxs, group_bytes, i, bsize):
    """The group hint for block i of the rows at pxs: block i of the rows group_bytes on (a
    32-element block every PREFETCH_GROUP-th block, a line; a K-quant super-block every block,
    each of its lines)."""
    lines = 1 if bsize <= 64 else -(-bsize // 64)

    def issue():
        for px in pxs:
            for line in range(lines):
                _prefetch_call(b, at(b, px, b.add(b.mul(i, i.type(bsize)), b.add(group_bytes, i.type(64 * line)))))
    _every(b, i, PREFETCH_GROUP if bsize <= 64 else 1, issue)


def _byte_ptr(context, builder, aryty, ary, off):
    """i8* to element `off` of a Numba array."""
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [off]), I8.as_pointer())


def _make_dot(kind: int, rows: int = 1):
    """The vec_dot intrinsic of `kind`; rows > 1: that many src0 rows x_step bytes apart against the
    one src1 row, a tuple of floats, each row's sums in the single-row order (the same floats)."""
    bsize, blen, ys_bytes, extra_lanes, emit = SPECS[kind]
    zero = ir.Constant(F32, 0.0) if extra_lanes < 2 else ir.Constant(vec(F32, extra_lanes), [0.0] * extra_lanes)

    def codegen(context, builder, sig, args):
        b = builder
        if rows == 1:
            x, xo, yq, yo, yd, ydo, ys, yso, nblk, table = args
        else:
            x, xo, step, yq, yo, yd, ydo, ys, yso, nblk, table = args
        tx, tyq, tyd, tys, ttab = (sig.args[i + (rows > 1 and i > 0)] for i in (0, 2, 4, 6, 9))
        px0 = _byte_ptr(context, b, tx, x, xo)
        pxs = [px0] + [at(b, px0, b.mul(step, step.type(r))) for r in range(1, rows)]
        py0 = _byte_ptr(context, b, tyq, yq, yo)
        pys0 = _byte_ptr(context, b, tys, ys, yso)
        pyd = b.gep(context.make_array(tyd)(context, b, yd).data, [ydo])
        tab = context.make_array(ttab)(context, b, table).data
        accs = [cgutils.alloca_once_value(b, ir.Constant(vec(F32, 8), [0.0] * 8)) for _ in range(rows)]
        extras = [cgutils.alloca_once_value(b, zero) for _ in range(rows)]
        with cgutils.for_range(b, nblk) as loop:
            i = loop.index
            py, yd_i = at(b, py0, b.mul(i, i.type(blen))), b.load(b.gep(pyd, [i]))
            pys = at(b, pys0, b.mul(i, i.type(ys_bytes)))
            if rows > 1:
                _prefetch_group(b, pxs, b.mul(step, step.type(rows)), i, bsize)
            for px, acc, extra in zip(pxs, accs, extras):
                if kind in PREFETCH and rows == 1:
                    _prefetch(b, kind, px, i, bsize)
                lanes, scale, more = emit(b, at(b, px, b.mul(i, i.type(bsize))), py, yd_i, pys, tab)
                b.store(add_scaled_lanes(b, b.load(acc), lanes, scale), acc)
                if more is not None:
                    b.store(b.fadd(b.load(extra), more), extra)
        out = [b.fadd(hsum(b, b.load(acc)), hsum(b, b.load(extra))) for acc, extra in zip(accs, extras)]
        return out[0] if rows == 1 else context.make_tuple(b, sig.return_type, out)

    if rows == 1:
        def typer(typingctx, x, x_off, yq, y_off, yd, yd_off, ys, ys_off, nblk, table):
            return types.float32(x, x_off, yq, y_off, yd, yd_off, ys, ys_off, nblk, table), codegen
    else:
        def typer(typingctx, x, x_off, x_step, yq, y_off, yd, yd_off, ys, ys_off, nblk, table):
            return (types.UniTuple(types.float32, rows)(x, x_off, x_step, yq, y_off, yd, yd_off, ys, ys_off, nblk,
                                                        table), codegen)

    typer.__name__ = f"dot_{D.type_name(kind)}" + (f"_x{rows}" if rows > 1 else "")
    return intrinsic(typer)


dot_q4_0 = _make_dot(D.TYPE_Q4_0)
dot_q4_1 = _make_dot(D.TYPE_Q4_1)
dot_q5_0 = _make_dot(D.TYPE_Q5_0)
dot_q5_1 = _make_dot(D.TYPE_Q5_1)
dot_q8_0 = _make_dot(D.TYPE_Q8_0)
dot_q4_k = _make_dot(D.TYPE_Q4_K)
dot_q5_k = _make_dot(D.TYPE_Q5_K)
dot_q6_k = _make_dot(D.TYPE_Q6_K)

# four src0 rows against one src1 row (backends/cpu/quant.py takes them for every type): four
# independent accumulator chains, src1's block loaded once for all four, the next four rows
# prefetched (_prefetch_group). One thread, 4096 x 4096, against the single row (Sapphire
# Rapids): Q8_0 -7%, Q4_0 -6%, Q5_0 / Q5_1 -7 / -11%, Q4_1 -1%. The K-quants lost 5-10% there
# (with the in-row hint and a super-block's scale shuffles on the shuffle port); with the group
# hint and lane_splat16, Ice Lake, 2 threads, one process: Q4_K 4096 x 4096 0.52 -> 0.46 ms,
# 4096 x 14336 2.34 -> 2.25; Q6_K 0.70 -> 0.64, 3.40 -> 2.96.
ROWS = 4
ROW_KINDS = (D.TYPE_Q4_0, D.TYPE_Q4_1, D.TYPE_Q5_0, D.TYPE_Q5_1, D.TYPE_Q8_0, D.TYPE_Q4_K, D.TYPE_Q5_K,
             D.TYPE_Q6_K)   # the types with a dot_*_rows
dot_q4_0_rows = _make_dot(D.TYPE_Q4_0, ROWS)
dot_q4_1_rows = _make_dot(D.TYPE_Q4_1, ROWS)
dot_q5_0_rows = _make_dot(D.TYPE_Q5_0, ROWS)
dot_q5_1_rows = _make_dot(D.TYPE_Q5_1, ROWS)
dot_q8_0_rows = _make_dot(D.TYPE_Q8_0, ROWS)
dot_q4_k_rows = _make_dot(D.TYPE_Q4_K, ROWS)
dot_q5_k_rows = _make_dot(D.TYPE_Q5_K, ROWS)
dot_q6_k_rows = _make_dot(D.TYPE_Q6_K, ROWS)
