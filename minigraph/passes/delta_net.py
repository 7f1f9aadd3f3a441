"""Delta-net fusion: llama.cpp's chunked and autoregressive delta nets -> one GATED_DELTA_NET.

How a region is found, from structure and values only (names and tags are never read):
  1. an anchor pattern picks candidate nodes: for the chunked form the SOLVE_TRI whose matrix is
     I + tri(kb, LOWER) and whose right side is -tri(kb, LOWER); for the one-token form the
     SUM_ROWS of (state * exp(g)) * permute(k).
  2. small patterns near the anchor give the dimensions (S, H_k, H_v, n_tokens, n_seqs, GDA/KDA,
     chunk size): the `pad(permute(x, 0, 2, 1, 3))` entries of k, beta and g.
  3. llama.cpp's builder (minigraph.models.delta_net) is traced on placeholders of those shapes
     and matched node for node against the graph from the anchor (passes/template.py); the
     placeholders bind the real q, k, v, g, beta and state, wherever they come from.
  4. Inductor's single-user rule: no tensor of the region may be read from outside except the
     two outputs (attention output, final state), which become views of the fused op's packed
     result, so downstream consumers are untouched.
  5. the fused node is built only when the backend the region would run on supports_op it.

llama.cpp's one-token graph with a KDA (per-key) gate decays along the value index, unlike
GATED_DELTA_NET (see models/delta_net.py): it is a near miss by design and never rewritten.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Union

from minigraph.core.context import Context
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.models.delta_net import build_delta_net_autoregressive, build_delta_net_chunking
from minigraph.ops.linalg import TRI_TYPE_LOWER
from minigraph.passes.pipeline import PassLog, Rewrite, Target, view_segment
from minigraph.passes.patterns import AX0213, Miss, P, PatternMatcher, find, is_relabel, normalise
from minigraph.core.tensor import Tensor, is_contiguous

from minigraph.passes.elementwise import user_names
from minigraph.passes.template import Template, TemplateMatch, match_template, norm_consumers

# -- patterns ------------------------------------------------------------------------------------
_ATTN = P("TRI", name="attn", params={"tri_type": TRI_TYPE_LOWER})
CHUNKED_ANCHOR = P("SOLVE_TRI", (P("ADD", [_ATTN, P("DIAG", (P("FILL"),))]), P("NEG", (_ATTN,))),
                   params={"left": 1, "lower": 1, "uni": 0})


def _entry(name: str) -> P:
    """How llama.cpp brings an input into the chunked form: pad(permute(x, 0, 2, 1, 3))."""
    return P("PAD", (P("PERMUTE", (P.var(name),), params=AX0213),))


K_BETA = P("MUL", (_entry("k"), _entry("b")), check=lambda t, c: c["b"].ne[0] == 1, why="beta must be [1, H, T, n]")
G_CUMSUM = P("CUMSUM", (P("CONT", (P("TRANSPOSE", (_entry("g"),)),)),))

AR_ANCHOR = P("SUM_ROWS", (P("MUL", (P("MUL", (P.var("s"), P("EXP", name="gexp"))),
                                     P("PERMUTE", (P.var("k"),), params=AX0213))),))


@lru_cache(maxsize=64)
def _template(kind: str, shapes: tuple, chunk: int) -> Template:
    if kind == "chunked":
        return Template(build_delta_net_chunking, shapes, chunk_size=chunk)
    return Template(build_delta_net_autoregressive, shapes)


def _shapes(S: int, H_k: int, H_v: int, T: int, N: int, g0: int) -> tuple:
    """Placeholder shapes of q, k, v, g, beta, state (ggml ne order)."""
    return ((S, H_k, T, N), (S, H_k, T, N), (S, H_v, T, N), (g0, H_v, T, N), (1, H_v, T, N), (S, S, H_v, N))


# -- rules: anchor -> (kind, shapes, chunk) or a Miss ------------------------------------------------
def _chunked_dims(anchor: Tensor, caps: dict) -> Union[tuple, Miss]:
    kb = find(K_BETA, anchor, depth=12)
    gc = find(G_CUMSUM, anchor, depth=14)
    if kb is None or gc is None:
        return Miss(anchor, "SOLVE_TRI of a TRI'd matrix, but no pad(permute(k)) * pad(permute(beta)) "
                            "or cumsum of the padded gate before it")
    k, b, g = kb["k"], kb["b"], gc["g"]
    S, H_k, T, N = k.ne
    return "chunked", _shapes(S, H_k, b.ne[1], T, N, g.ne[0]), anchor.ne[0]


def _ar_dims(anchor: Tensor, caps: dict) -> Union[tuple, Miss]:
    s, k, gexp = caps["s"], caps["k"], caps["gexp"]
    S, _, H_v, N = s.ne
    if gexp.ne[1] != 1:
        return Miss(gexp, "one-token delta net with a per-key (KDA) gate: llama.cpp's graph decays the "
                          "value index, GATED_DELTA_NET the key index; not the same math, left alone")
    if k.ne[2] != 1:
        return Miss(k, "one-token delta net pattern with n_tokens != 1")
    return "autoregressive", _shapes(S, k.ne[1], H_v, 1, N, 1), 0


CHUNKED = PatternMatcher([(CHUNKED_ANCHOR, _chunked_dims)])
AUTOREGRESSIVE = PatternMatcher([(AR_ANCHOR, _ar_dims)])


# -- the rewrite ------------------------------------------------------------------------------------
def _adapt(ctx: Context, t: Tensor, ne: tuple) -> Tensor:
    if t.ne == ne:
        return t
    return ctx.reshape_4d(t if is_contiguous(t) else ctx.cont(t), *ne)


def _splice(graph: Graph, m: TemplateMatch, shapes: tuple, anchor: Tensor, keep: set, target: Target,
            ctx: Context, name: str) -> Union[Rewrite, Miss]:
    """Single-user check, then the fused node and the views that replace the region's outputs."""
    def in_region(x: Optional[Tensor]) -> bool:
        return x is not None and id(normalise(x)) in m.region

    S, H_v, T, N = shapes[2]
    segments = [((S, H_v, T, N), 0), ((S, S, H_v, N), 4 * S * H_v * T * N)]
    outs = {id(o): j for j, o in enumerate(m.outputs)}
    external: dict[int, tuple[Tensor, int]] = {}
    for c in graph.nodes:
        if in_region(c) and (id(c) in m.region or is_relabel(c)):
            continue
        for s in c.src:
            if in_region(s):
                j = outs.get(id(normalise(s)))
                if j is None:
                    return Miss(normalise(s), f"an intermediate of the region is read from outside by {c.op}")
                external[id(s)] = (s, j)
    for t in graph.nodes:
        if in_region(t) and id(normalise(t)) in outs:  # every spelling of an output: another
            external[id(t)] = (t, outs[id(normalise(t))])  # rewrite may have bound any of them
        elif id(t) in keep and in_region(t):
            return Miss(t, "an intermediate of the region is a graph output")
    try:
        srcs = [_adapt(ctx, t, ne) for t, ne in zip(m.inputs, shapes)]
        fused = ctx.gated_delta_net(*srcs, 1)
    except MinigraphError as e:
        return Miss(anchor, f"GATED_DELTA_NET refuses the region's inputs: {e}")
    region = [n for n in graph.nodes if in_region(n)]
    fused.op_params["fused_from"] = [n.op for n in region]
    fused.op_params["fused_pattern"] = name
    backend = target.placement(anchor)
    ok = target.supports(backend, fused) if backend is not None else None
    if not ok:
        why = ok.reason if ok is not None else "no backend runs the anchor"
        return Miss(anchor, f"{getattr(backend, 'name', '?')} does not support GATED_DELTA_NET here: {why}")
    rw = Rewrite(name, fused, absorbed=region)
    for x, j in external.values():
        offs = segments[j][1]
        # the view takes the place of the user's output: it keeps its name (dn_out, dn_state)
        rw.replace[id(x)] = view_segment(ctx, fused, x.ne, offs).set_name(x.name)
        rw.keep.append(x)
    carried = {x.name for x, _ in external.values()}
    fused.op_params["fused_names"] = [nm for nm in user_names(region) if nm not in carried]
    return rw


def _run(matcher: PatternMatcher, name: str, graph: Graph, target: Target, log: PassLog, keep: set) -> list:
    ctx = Context()
    consumers = None
    taken: set[int] = set()
    rewrites = []
    for anchor in graph.nodes:
        if id(anchor) in taken:
            continue
        dims, misses = matcher.rewrite(anchor)
        for miss in misses:
            log.add(name, "near_miss", miss)
        if dims is None:
            continue
        kind, shapes, chunk = dims
        tp = _template(kind, shapes, chunk)
        t_anchor = next(t for t in tp.core if isinstance(matcher.rules[0][0].match(t), dict))
        consumers = consumers if consumers is not None else norm_consumers(graph.nodes)
        m = match_template(tp, t_anchor, anchor, consumers)
        if isinstance(m, Miss):
            log.add(name, "near_miss", f"{kind} delta net {shapes[2]} not matched: {m}")
            continue
        if taken & set(m.region):
            log.add(name, "near_miss", "region overlaps one already rewritten")
            continue
        rw = _splice(graph, m, shapes, anchor, keep, target, ctx, name)
        if isinstance(rw, Miss):
            log.add(name, "refused", f"{kind} delta net {shapes[2]}: {rw}")
            continue
        taken |= set(m.region)
        rewrites.append(rw)
        log.add(name, "fused", f"{len(rw.absorbed)} nodes -> GATED_DELTA_NET S={shapes[2][0]} H={shapes[2][1]} "
                               f"T={shapes[2][2]} n_seqs={shapes[2][3]} g={shapes[3][0]}")
    return rewrites


def chunked_pass(graph: Graph, target: Target, log: PassLog, keep: set) -> list:
    return _run(CHUNKED, "delta_net_chunked", graph, target, log, keep)


def autoregressive_pass(graph: Graph, target: Target, log: PassLog, keep: set) -> list:
    return _run(AUTOREGRESSIVE, "delta_net_autoregressive", graph, target, log, keep)
