"""FLASH_ATTN_EXT conformance cases, in the shape of test-backend-ops' FLASH_ATTN_EXT grid.

Each case builds q [hsk, n_q, n_head, ne3], k [hsk, n_kv, n_head_kv, nk3], v [hsv, ...] of one
KV type and one KV layout, an optional mask and sinks, and runs ctx.flash_attn_ext. The same
builder runs on minigraph and on ggml's bridge (minigraph.testing.ggml_bridge), so it only uses
what both have. KV layouts (var kv_view):
    cont  k, v are leaves
    perm  stored [hs, n_head_kv, n_kv, ne3] and permuted (0, 2, 1, 3), as llama.cpp's KV cache views
    offs  views at an odd element offset inside a larger buffer, rows padded (nb1 > hs * size)
    vk    V is a view of K: view_4d(k, hsv, n_kv, n_head_kv, nk3, k.nb1, k.nb2, k.nb3, v_offs)
A var `ext=...` marks a minigraph extension that ggml refuses (f32 mask, ne3 broadcast).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, NamedTuple

import numpy as np

from minigraph.core import dtypes
from minigraph.core.cases import CASES, Case, make_input

TYPE_NAMES = {"f32": dtypes.TYPE_F32, "f16": dtypes.TYPE_F16, "bf16": dtypes.TYPE_BF16,
              "q8_0": dtypes.TYPE_Q8_0, "q4_0": dtypes.TYPE_Q4_0, "q4_1": dtypes.TYPE_Q4_1,
              "q5_0": dtypes.TYPE_Q5_0, "q5_1": dtypes.TYPE_Q5_1}
MAX_NMSE = 1e-6   # minigraph's kernels accumulate in f32 on the exact f16/bf16 values
# A quantized cache: the reference reads the dequantized K/V, but ggml's CPU (and minigraph's,
# as ggml) also rounds q to Q8_0 values for the K dots (~8 bits a block), which moves the
# scores; measured on these cases 0.9e-6 .. 1.9e-6 NMSE (seeds 1-3), for ggml and minigraph alike.
QUANT_NMSE = 2e-5


class FaCase(NamedTuple):
    hsk: int
    hsv: int
    n_head: int
    n_head_kv: int
    n_kv: int
    n_q: int
    mask: str = "rand"        # none | rand | causal | dead_row (row 0 all -inf, every 3rd kv masked)
    max_bias: float = 0.0
    softcap: float = 0.0
    sinks: bool = False
    type_kv: str = "f32"
    layout: str = "cont"
    ne3: int = 1
    nk3: int = 1
    v_offs: int = 0           # vk layout: V's row offset inside K's row, in elements
    mask_f32: bool = False    # an f32 mask (minigraph extension; ggml takes f16 only)

    def vars(self) -> str:
        s = (f"hsk={self.hsk},hsv={self.hsv},nh={self.n_head},nr={self.n_head // self.n_head_kv},"
             f"kv={self.n_kv},nb={self.n_q},mask={self.mask},max_bias={self.max_bias:g},"
             f"logit_softcap={self.softcap:g},sinks={int(self.sinks)},type_KV={self.type_kv},"
             f"kv_view={self.layout},ne3={self.ne3}")
        if self.layout == "vk":
            s += f",v_offs={self.v_offs}"
        if self.mask_f32 and self.mask != "none":
            s += ",ext=f32_mask"
        if self.nk3 != self.ne3:
            s += f",nk3={self.nk3},ext=ne3_broadcast"
        return s


def row_bytes(type_: int, n: int) -> int:
    """ggml_row_size: bytes of n elements (whole blocks when quantized)."""
    return n // dtypes.blck_size(type_) * dtypes.type_size(type_)


def _quant_kv(ctx: Any, rng: np.random.Generator, c: FaCase, hs: int, type_: int) -> Any:
    """A quantized K or V (from_numpy quantizes with ggml's reference quantizer on both sides);
    the offs layout pads each row and the start by one block (views never split a block)."""
    def data(*ne):
        return rng.uniform(-1.0, 1.0, size=tuple(reversed(ne))).astype(np.float32)
    if c.layout == "perm":
        return ctx.permute(ctx.from_numpy(data(hs, c.n_head_kv, c.n_kv, c.nk3), type_), 0, 2, 1, 3)
    if c.layout == "offs":
        blk = dtypes.blck_size(type_)
        row = hs + blk
        n = row * c.n_kv * c.n_head_kv * c.nk3 + 2 * blk
        base = ctx.from_numpy(data(n), type_)
        return ctx.view_4d(base, hs, c.n_kv, c.n_head_kv, c.nk3, row_bytes(type_, row), row_bytes(type_, row * c.n_kv),
                           row_bytes(type_, row * c.n_kv * c.n_head_kv), row_bytes(type_, blk))
    return ctx.from_numpy(data(hs, c.n_kv, c.n_head_kv, c.nk3), type_)


def _kv(ctx: Any, rng: np.random.Generator, c: FaCase, hs: int, type_: int, name: str) -> Any:
    if dtypes.is_quantized(type_):
        return _quant_kv(ctx, rng, c, hs, type_)
    ne = [hs, c.n_kv, c.n_head_kv, c.nk3]
    if c.layout == "perm":
        base = make_input(ctx, rng, [hs, c.n_head_kv, c.n_kv, c.nk3], type_=type_, name=name)
        return ctx.permute(base, 0, 2, 1, 3)
    if c.layout == "offs":
        pad, row = 3, hs + 5   # odd element offset, padded rows
        ts = dtypes.type_size(type_)
        n = row * c.n_kv * c.n_head_kv * c.nk3 + pad + row
        base = make_input(ctx, rng, [n], type_=type_, name=name)
        return ctx.view_4d(base, hs, c.n_kv, c.n_head_kv, c.nk3, row * ts, row * c.n_kv * ts,
                           row * c.n_kv * c.n_head_kv * ts, pad * ts)
    return make_input(ctx, rng, ne, type_=type_, name=name)


def _mask(ctx: Any, rng: np.random.Generator, c: FaCase) -> Any:
    if c.mask == "none":
        return None
    rows = c.n_q + 1   # ggml reads rows 0..n_q-1 through nb1: more rows than n_q must work
    if c.mask == "causal":
        i = np.arange(rows)[:, None]
        j = np.arange(c.n_kv)[None, :]
        m = np.where(j <= c.n_kv - c.n_q + i, 0.0, -np.inf).astype(np.float32)
    else:
        m = rng.uniform(-1.0, 1.0, size=(rows, c.n_kv)).astype(np.float32)
        if c.mask == "dead_row":
            m[0, :] = -np.inf   # query row 0 sees nothing: its result is 0 (or 0 with a sink)
            m[1:, ::3] = -np.inf
    t = ctx.new_tensor_4d(dtypes.TYPE_F32 if c.mask_f32 else dtypes.TYPE_F16, c.n_kv, rows, 1, 1)
    t.set_data(m.reshape(1, 1, rows, c.n_kv))
    return t


def build_case(ctx: Any, rng: np.random.Generator, c: FaCase) -> Any:
    """The FLASH_ATTN_EXT node of case `c` on `ctx` (minigraph Context or ggml_bridge.GgmlContext)."""
    type_ = TYPE_NAMES[c.type_kv]
    q = make_input(ctx, rng, [c.hsk, c.n_q, c.n_head, c.ne3], name="q")
    k = _kv(ctx, rng, c, c.hsk, type_, "k")
    if c.layout == "vk":
        v = ctx.view_4d(k, c.hsv, c.n_kv, c.n_head_kv, c.nk3, k.nb[1], k.nb[2], k.nb[3],
                        row_bytes(type_, c.v_offs))
    else:
        v = _kv(ctx, rng, c, c.hsv, type_, "v")
    mask = _mask(ctx, rng, c)
    out = ctx.flash_attn_ext(q, k, v, mask, 1.0 / math.sqrt(c.hsk), c.max_bias, c.softcap)
    if c.sinks:
        sinks = make_input(ctx, rng, [c.n_head], lo=-2.0, hi=2.0, name="sinks")
        add_sinks(ctx, out, sinks)
    return out


def add_sinks(ctx: Any, out: Any, sinks: Any) -> None:
    """ggml_flash_attn_ext_add_sinks takes no context: minigraph's is a module function, the
    bridge (minigraph.testing.ggml_bridge) has it as a method of its context."""
    from minigraph.core.context import Context

    if isinstance(ctx, Context):
        from minigraph.ops.attention import flash_attn_ext_add_sinks

        flash_attn_ext_add_sinks(out, sinks)
    else:
        ctx.flash_attn_ext_add_sinks(out, sinks)


GRID = [
    # hsk/hsv 64: masks, GQA 1/4/16, n_kv not a multiple of 32/64, n_q 1..8
    FaCase(64, 64, 4, 4, 33, 1),
    FaCase(64, 64, 4, 1, 113, 8),
    FaCase(64, 64, 4, 4, 7, 3, mask="none"),
    FaCase(64, 64, 16, 1, 97, 1),
    FaCase(64, 64, 4, 4, 40, 5, mask="causal"),
    FaCase(64, 64, 4, 2, 33, 3, mask="dead_row"),
    FaCase(64, 64, 4, 2, 33, 3, mask="dead_row", sinks=True),
    # ALiBi (n_head 6: heads 4, 5 take the m1 branch), softcap, sinks
    FaCase(64, 64, 8, 8, 33, 2, max_bias=8.0),
    FaCase(64, 64, 6, 2, 33, 4, max_bias=8.0),
    FaCase(64, 64, 4, 4, 33, 4, softcap=20.0),
    FaCase(64, 64, 4, 2, 65, 2, sinks=True),
    FaCase(64, 64, 4, 2, 65, 2, mask="none", sinks=True),
    FaCase(64, 64, 6, 3, 65, 2, max_bias=4.0, softcap=10.0, sinks=True, type_kv="f16"),
    # head sizes, KV types
    FaCase(128, 128, 4, 4, 100, 5, type_kv="f16"),
    FaCase(128, 128, 4, 1, 100, 1, type_kv="bf16"),
    FaCase(192, 128, 4, 4, 65, 3, type_kv="f16"),
    FaCase(192, 128, 4, 2, 65, 1, layout="perm"),
    # layouts: permuted cache views, odd offsets with padded rows, batches
    FaCase(64, 64, 4, 4, 33, 4, type_kv="f16", layout="perm"),
    FaCase(64, 64, 4, 2, 33, 3, layout="offs"),
    FaCase(64, 64, 4, 4, 33, 3, type_kv="f16", layout="offs"),
    FaCase(64, 64, 4, 4, 33, 3, type_kv="bf16", layout="offs"),
    FaCase(64, 64, 4, 2, 33, 4, ne3=2, nk3=2),
    # flash-decoding split of the kv range (n_q = 1, few tasks), with sinks; causal blocks skipped
    FaCase(64, 64, 4, 1, 300, 1, sinks=True),
    FaCase(576, 512, 16, 1, 200, 1, type_kv="f16", layout="vk", sinks=True),
    FaCase(64, 64, 4, 1, 130, 130, mask="causal"),
    # MLA: V a view of K (576/512), decode and causal prefill; and V inside K at an offset
    FaCase(576, 512, 16, 1, 70, 1, type_kv="f16", layout="vk"),
    FaCase(576, 512, 16, 1, 40, 4, mask="causal", type_kv="f16", layout="vk"),
    FaCase(576, 512, 4, 1, 33, 2, layout="cont"),
    FaCase(128, 64, 4, 2, 33, 3, layout="vk", v_offs=32),
    FaCase(128, 64, 4, 2, 33, 3, type_kv="bf16", layout="vk", v_offs=64),
    # minigraph extensions (ggml asserts on them)
    FaCase(64, 64, 4, 2, 33, 3, mask="causal", mask_f32=True),
    FaCase(64, 64, 4, 2, 33, 2, ne3=2, nk3=1),
    # a quantized KV cache (issue 14): every type ggml's CPU takes, n_kv off multiples of 32, GQA,
    # masks, ALiBi + softcap + sinks, DK != DV, the flash-decoding split, permuted and padded
    # views, MLA's V a view of K (576/512: 18 and 16 blocks) and a V one block into K
    FaCase(64, 64, 4, 4, 33, 1, type_kv="q8_0"),
    FaCase(64, 64, 4, 1, 113, 8, type_kv="q4_0"),
    FaCase(64, 64, 4, 2, 40, 5, mask="causal", type_kv="q4_1"),
    FaCase(64, 64, 4, 4, 7, 3, mask="none", type_kv="q5_0"),
    FaCase(64, 64, 4, 2, 33, 3, mask="dead_row", sinks=True, type_kv="q5_1"),
    FaCase(64, 64, 6, 3, 65, 2, max_bias=4.0, softcap=10.0, sinks=True, type_kv="q8_0"),
    FaCase(192, 128, 4, 4, 65, 3, type_kv="q8_0"),
    FaCase(64, 64, 4, 1, 300, 1, sinks=True, type_kv="q4_0"),
    FaCase(64, 64, 4, 2, 33, 4, type_kv="q8_0", layout="perm"),
    FaCase(64, 64, 4, 2, 33, 3, type_kv="q4_0", layout="offs"),
    FaCase(576, 512, 16, 1, 70, 1, type_kv="q8_0", layout="vk"),
    FaCase(576, 512, 16, 1, 40, 4, mask="causal", type_kv="q4_0", layout="vk"),
    FaCase(128, 64, 4, 2, 33, 3, type_kv="q8_0", layout="vk", v_offs=32),
]


def cases() -> Iterator[Case]:
    for c in GRID:
        tol = QUANT_NMSE if dtypes.is_quantized(TYPE_NAMES[c.type_kv]) else MAX_NMSE
        yield Case("FLASH_ATTN_EXT", c.vars(), lambda ctx, rng, c=c: build_case(ctx, rng, c), tol)


CASES.extend(cases())
