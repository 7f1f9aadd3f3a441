"""The conformance cases of the op families (test-backend-ops style), appended to the core's CASES."""
from __future__ import annotations

import itertools
from typing import Any, Iterator

import numpy as np

from minigraph.core import dtypes
from minigraph.core.cases import CASES, LAYOUTS, Case, make_input
from minigraph.ops.gated_delta_net import gated_delta_net_set_bcast
from minigraph.ops.linalg import well_conditioned_triangle


def _cases() -> Iterator[Case]:
    unary_ranges = {"SQRT": (0.1, 2.0), "LOG": (0.1, 2.0)}
    for op, layout in itertools.product(["NEG", "ABS", "SQR", "SQRT", "EXP", "LOG", "SIGMOID", "SILU",
                                         "GELU", "TANH", "RELU", "SOFTPLUS"], LAYOUTS):
        lo, hi = unary_ranges.get(op, (-3.0, 3.0))
        yield Case(op, f"ne=[10,5,4,3],layout={layout}",
                   lambda c, r, op=op, L=layout, lo=lo, hi=hi: getattr(c, op.lower())(make_input(c, r, [10, 5, 4, 3], L, lo, hi)))
    for (op, ne_b), layout in itertools.product(
            [(op, ne_b) for op in ("ADD", "SUB", "MUL", "DIV") for ne_b in ([10, 5, 4, 3], [10, 1, 1, 1], [1, 5, 2, 1])],
            LAYOUTS):
        lo = 0.5 if op == "DIV" else -1.0
        yield Case(op, f"ne_a=[10,5,4,3],ne_b={ne_b},layout={layout}".replace(" ", ""),
                   lambda c, r, op=op, nb=ne_b, L=layout, lo=lo: getattr(c, op.lower())(
                       make_input(c, r, [10, 5, 4, 3], L), make_input(c, r, nb, "cont", lo, 2.0)))
    for layout in LAYOUTS:
        yield Case("SCALE", f"ne=[7,3,2,2],s=0.25,layout={layout}",
                   lambda c, r, L=layout: c.scale(make_input(c, r, [7, 3, 2, 2], L), 0.25))
        yield Case("CONT", f"ne=[6,5,4,3],layout={layout}", lambda c, r, L=layout: c.cont(make_input(c, r, [6, 5, 4, 3], L)))
        yield Case("DUP", f"ne=[6,5,1,1],layout={layout}", lambda c, r, L=layout: c.dup(make_input(c, r, [6, 5], L)))
        yield Case("CPY", f"ne=[6,5,4,1],layout={layout}",
                   lambda c, r, L=layout: c.cpy(make_input(c, r, [6, 5, 4], L), c.new_tensor_2d(dtypes.TYPE_F32, 30, 4)))
        yield Case("PAD", f"ne=[5,4,3,2],pad=[3,2,1,0],layout={layout}",
                   lambda c, r, L=layout: c.pad(make_input(c, r, [5, 4, 3, 2], L), 3, 2, 1, 0))
        yield Case("REPEAT", f"ne=[3,2,1,1],to=[6,4,3,2],layout={layout}",
                   lambda c, r, L=layout: c.repeat_4d(make_input(c, r, [3, 2], L), 6, 4, 3, 2))
        for dim in range(4):
            yield Case("CONCAT", f"dim={dim},layout={layout}",
                       lambda c, r, L=layout, d=dim: c.concat(make_input(c, r, [4, 3, 2, 2], L),
                                                              make_input(c, r, [4 + 2 * (d == 0), 3 + (d == 1), 2 + (d == 2), 2 + (d == 3)]), d))
            yield Case("CUMSUM", f"ne=[9,5,4,3],dim={dim},layout={layout}",
                       lambda c, r, L=layout, d=dim: c.cumsum(make_input(c, r, [9, 5, 4, 3], L), d))
        yield Case("SUM", f"ne=[10,5,4,3],layout={layout}", lambda c, r, L=layout: c.sum(make_input(c, r, [10, 5, 4, 3], L, 0.1, 1.0)))
        yield Case("SUM_ROWS", f"ne=[10,5,4,3],layout={layout}", lambda c, r, L=layout: c.sum_rows(make_input(c, r, [10, 5, 4, 3], L, 0.1, 1.0)))
        yield Case("MEAN", f"ne=[10,5,4,3],layout={layout}", lambda c, r, L=layout: c.mean(make_input(c, r, [10, 5, 4, 3], L, 0.1, 1.0)))
        for op in ("L2_NORM", "RMS_NORM", "NORM"):
            yield Case(op, f"ne=[33,5,2,1],eps=1e-6,layout={layout}",
                       lambda c, r, L=layout, op=op: getattr(c, op.lower())(make_input(c, r, [33, 5, 2], L), 1e-6))
        yield Case("SOFT_MAX", f"ne=[17,6,4,2],layout={layout}", lambda c, r, L=layout: c.soft_max(make_input(c, r, [17, 6, 4, 2], L, -4, 4)))
        yield Case("SOFT_MAX", f"ne=[17,6,4,2],mask=[17,8,2,1],scale=0.5,max_bias=8,layout={layout}",
                   lambda c, r, L=layout: c.soft_max_ext(make_input(c, r, [17, 6, 4, 2], L, -4, 4),
                                                         make_input(c, r, [17, 8, 2, 1], "cont", -2, 0), 0.5, 8.0))
        yield Case("SOFT_MAX", f"ne=[17,6,4,2],mask=[17,8,2,1],scale=0.5,max_bias=8,sinks=1,layout={layout}",
                   lambda c, r, L=layout: _soft_max_with_sinks(c, r, L))
        for tri_type in range(4):
            yield Case("TRI", f"ne=[7,7,3,2],type={tri_type},layout={layout}",
                       lambda c, r, L=layout, tt=tri_type: c.tri(make_input(c, r, [7, 7, 3, 2], L), tt))
        yield Case("FILL", f"ne=[5,4,3,2],c=1.5,layout={layout}", lambda c, r, L=layout: c.fill(make_input(c, r, [5, 4, 3, 2], L), 1.5))
        yield Case("DIAG", f"ne=[6,1,3,2],layout={layout}", lambda c, r, L=layout: c.diag(make_input(c, r, [6, 1, 3, 2], L)))
        for ne_a, ne_b in (([16, 9, 1, 1], [16, 5, 1, 1]), ([32, 7, 2, 3], [32, 3, 4, 3]), ([65, 17, 1, 2], [65, 1, 3, 2])):
            yield Case("MUL_MAT", f"ne_a={ne_a},ne_b={ne_b},layout={layout}".replace(" ", ""),
                       lambda c, r, L=layout, a=ne_a, b=ne_b: c.mul_mat(make_input(c, r, a, "cont" if L == "perm" else L), make_input(c, r, b, L)))
        yield Case("OUT_PROD", f"ne_a=[9,5,2,1],ne_b=[7,5,4,1],layout={layout}",
                   lambda c, r, L=layout: c.out_prod(make_input(c, r, [9, 5, 2, 1], L), make_input(c, r, [7, 5, 4, 1], L)))
        yield Case("GET_ROWS", f"ne=[8,10,3,1],rows=5,layout={layout}",
                   lambda c, r, L=layout: c.get_rows(make_input(c, r, [8, 10, 3], L),
                                                     c.from_numpy(r.integers(0, 10, size=(3, 5)).astype(np.int32))))
    # the README's example: FILL reads only its input's shape, so a leaf without data must work on
    # every backend (it did on the CPU only)
    yield Case("TRI", "fill_of_new_tensor=1,ne=[6,6,1,1],type=2",
               lambda c, r: c.tri(c.fill(c.new_tensor_2d(dtypes.TYPE_F32, 6, 6), 1.0), 2))
    # ggml's hard ones: 64-wide chunk rows (the chunked delta net's gate cumsum), and MLA's V as a
    # view of K laid out [kv, pe] per row (a strided view whose rows skip the pe part)
    yield Case("CUMSUM", "ne=[64,64,4,1],dim=0,chunk_rows=1",
               lambda c, r: c.cumsum(make_input(c, r, [64, 64, 4, 1], "cont", -2.0, 0.0), 0))
    yield Case("MUL_MAT", "mla_v_view_of_k=1,kv=16,pe=8,n_kv=10,tokens=5,heads=2",
               lambda c, r: _mla_case(c, r, 16, 8, 10, 5, 2))
    for left, lower, uni in itertools.product((True, False), repeat=3):
        yield Case("SOLVE_TRI", f"n=16,k=5,left={int(left)},lower={int(lower)},uni={int(uni)}",
                   lambda c, r, lf=left, lw=lower, u=uni: _solve_case(c, r, 16, 5, lf, lw, u), 1e-6)
    yield Case("SOLVE_TRI", "n=64,k=64,unit_lower=1,batch=[4,2]",
               lambda c, r: _solve_case(c, r, 64, 64, True, True, True, batch=(4, 2)), 1e-5)
    for blk, off4 in itertools.product((16, 32), (True, False)):
        for op in ("acc", "set"):
            yield Case(op.upper(), f"block={blk},ne2=3,ne3=2,offset_4d={int(off4)}",
                       lambda c, r, b=blk, o4=off4, op=op: _region_case(c, r, op, b, o4))
    for op in ("acc_inplace", "set_inplace"):
        yield Case(op.split("_")[0].upper(), f"{op},block=16,ne2=3,ne3=2",
                   lambda c, r, op=op: _region_case(c, r, op, 16, True))
    for kda, gqa, n_seqs, T, K in ((0, 1, 1, 1, 1), (0, 2, 2, 5, 3), (1, 1, 2, 33, 1), (1, 2, 1, 4, 6), (0, 1, 1, 65, 2)):
        yield Case("GATED_DELTA_NET", f"S=16,H_k=2,gqa={gqa},T={T},n_seqs={n_seqs},kda={kda},K={K}",
                   lambda c, r, kda=kda, g=gqa, N=n_seqs, T=T, K=K: _gdn_case(c, r, 16, 2, g, T, N, kda, K), 1e-6)
    # value head h reads q/k head h // gqa (Qwen3-Next's interleaved repeat): decode, recurrence, chunks
    for kda, gqa, n_seqs, T, K in ((0, 3, 2, 1, 1), (1, 2, 1, 5, 2), (0, 3, 1, 70, 1), (1, 2, 2, 33, 1)):
        yield Case("GATED_DELTA_NET", f"S=16,H_k=2,gqa={gqa},T={T},n_seqs={n_seqs},kda={kda},K={K},bcast=1",
                   lambda c, r, kda=kda, g=gqa, N=n_seqs, T=T, K=K: _gdn_case(c, r, 16, 2, g, T, N, kda, K, 1), 1e-6)


def _mla_case(ctx, rng, kv, pe, n_kv, tokens, heads):
    """K rows hold [kv | pe]; V is the kv part of each row, read through K's strides."""
    k = make_input(ctx, rng, [kv + pe, n_kv, heads], name="k_mla")
    v = ctx.view_3d(k, kv, n_kv, heads, k.nb[1], k.nb[2], 0)
    q = make_input(ctx, rng, [kv, tokens, heads], name="q")
    return ctx.mul_mat(v, q)


def _solve_case(ctx, rng, n, k, left, lower, uni, batch=(1, 1)):
    A = ctx.from_numpy(well_conditioned_triangle((*batch[::-1], n, n), rng).astype(np.float32))
    B = make_input(ctx, rng, [k, n, *batch] if left else [n, k, *batch])
    return ctx.solve_tri(A, B, left, lower, uni)


def _region_case(ctx, rng, op, blk, offset_4d):
    """acc/set of a [blk, blk, 3, 2] block into a [2*blk+3, 2*blk, 4, 3] tensor at a 4-D offset."""
    a = make_input(ctx, rng, [2 * blk + 3, 2 * blk, 4, 3])
    b = make_input(ctx, rng, [blk, blk, 3, 2])
    nb1, nb2, nb3 = a.nb[1], a.nb[2], a.nb[3]
    offset = (2 * a.nb[0] + 3 * nb1 + (nb2 + nb3 if offset_4d else 0))
    a = ctx.cont(a)  # acc/set want a contiguous destination
    return getattr(ctx, op)(a, b, nb1, nb2, nb3, offset)


def _gdn_case(ctx, rng, S, H_k, gqa, T, N, kda, K, bcast=0):
    H = H_k * gqa
    q = make_input(ctx, rng, [S, H_k, T, N], name="q")
    k = make_input(ctx, rng, [S, H_k, T, N], name="k")
    v = make_input(ctx, rng, [S, H, T, N], name="v")
    g = make_input(ctx, rng, [S if kda else 1, H, T, N], "cont", -20.0, -1e-4, name="g")
    beta = make_input(ctx, rng, [1, H, T, N], "cont", 0.0, 1.0, name="beta")
    s = make_input(ctx, rng, [S, S, H, N], name="state")
    out = ctx.gated_delta_net(ctx.l2_norm(q, 1e-6), ctx.l2_norm(k, 1e-6), v, g, beta, s, K)
    if bcast:
        gated_delta_net_set_bcast(out, bcast)
    return out


def _view_cases() -> Iterator[Case]:
    """VIEW/RESHAPE/PERMUTE/TRANSPOSE: built as the view, materialised with cont (ggml's
    test-backend-ops does the same). VIEW and RESHAPE need contiguous rows, so no "perm" layout."""
    for layout in ("cont", "offs"):
        yield Case("VIEW", f"ne=[8,6,4,2],view=[5,3,4,2],at=[2,1,0,0],layout={layout}",
                   lambda c, r, L=layout: _view_case(c, make_input(c, r, [8, 6, 4, 2], L)))
        yield Case("RESHAPE", f"ne=[8,6,4,2],to=[12,4,8,1],layout={layout}",
                   lambda c, r, L=layout: c.cont(c.reshape_3d(make_input(c, r, [8, 6, 4, 2], L), 12, 4, 8)))
    for layout in LAYOUTS:
        for axes in ((1, 0, 2, 3), (2, 0, 3, 1), (3, 2, 1, 0)):
            yield Case("PERMUTE", f"ne=[5,4,3,2],axes={list(axes)},layout={layout}".replace(" ", ""),
                       lambda c, r, L=layout, ax=axes: c.cont(c.permute(make_input(c, r, [5, 4, 3, 2], L), *ax)))
        yield Case("TRANSPOSE", f"ne=[7,5,3,2],layout={layout}",
                   lambda c, r, L=layout: c.cont(c.transpose(make_input(c, r, [7, 5, 3, 2], L))))


def _view_case(ctx, a):
    """A [5, 3, 4, 2] window of a starting at element (2, 1, 0, 0), through a's strides."""
    return ctx.cont(ctx.view_4d(a, 5, 3, 4, 2, a.nb[1], a.nb[2], a.nb[3], 2 * a.nb[0] + a.nb[1]))


CASES.extend(_cases())
CASES.extend(_view_cases())


def _soft_max_with_sinks(ctx: Any, rng: Any, layout: str) -> Any:
    """soft_max_ext with ALiBi and a mask, then ggml_soft_max_add_sinks (one sink per head, ne2):
    a module function in minigraph, a method of the bridge's context for ggml."""
    from minigraph.core.context import Context

    out = ctx.soft_max_ext(make_input(ctx, rng, [17, 6, 4, 2], layout, -4, 4),
                           make_input(ctx, rng, [17, 8, 2, 1], "cont", -2, 0), 0.5, 8.0)
    sinks = make_input(ctx, rng, [4], "cont", -2.0, 2.0)
    if isinstance(ctx, Context):
        from minigraph.ops.reduce import soft_max_add_sinks

        soft_max_add_sinks(out, sinks)
    else:
        ctx.soft_max_add_sinks(out, sinks)
    return out
