"""`minigraph dump`: a graph as a table (ggml_graph_print with placement), JSON or Graphviz DOT.

prepare() loads a TARGET, applies the fusion passes (`mg.optimize`, unless --no-fuse) and plans
it with the scheduler (`sched.reserve`), so every row can say where the node runs, in which
split, and what was copied. Rendering never runs the graph (--profile does, in
minigraph.profile).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph, graph_labels
from minigraph.core.registry import written_by
from minigraph.passes import DEFAULT_PIPELINE, Optimized
from minigraph.tools.graphio import load_target, node_attr
from minigraph.core.tensor import Tensor, is_contiguous, nbytes

BACKEND_COLOURS = ("#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9")  # by scheduler priority
LEAF_COLOUR = "pink"  # ggml_graph_dump_dot's leaf colour


# -- backends --------------------------------------------------------------------------------

def init_backend(name: str) -> Any:
    """'cpu' or 'cuda' (also ggml's names CPU, CUDA0): the backend, or MinigraphError saying why
    it is unavailable (numba-cuda missing, no GPU, the backend not built yet)."""
    import minigraph as mg

    key = name.lower()
    if key == "cpu":
        return mg.backend_cpu_init()
    if key in ("cuda", "cuda0"):
        init = getattr(mg, "backend_cuda_init", None)
        if init is None:
            from minigraph.run import backend_cuda_init as init
        try:
            return init(0)
        except Exception as e:  # ImportError, CUDA driver errors, a backend being written
            why = " ".join(str(e).split())  # driver errors span several lines
            raise MinigraphError(f"backend CUDA0 unavailable: {type(e).__name__}: {why}") from None
    raise MinigraphError(f"unknown backend {name!r} (known: cpu, cuda)")


def backends_for(kind: str) -> list:
    """Scheduler backends in priority order for --backend cpu|cuda|auto (the CPU always last)."""
    if kind == "cpu":
        return [init_backend("cpu")]
    if kind == "cuda":
        return [init_backend("cuda"), init_backend("cpu")]
    if kind == "auto":
        try:
            return [init_backend("cuda"), init_backend("cpu")]
        except MinigraphError:
            return [init_backend("cpu")]
    raise MinigraphError(f"unknown --backend {kind!r} (known: cpu, cuda, auto)")


def optimize(gf: Graph, backend: Any, fuse: bool) -> tuple[Optimized, str]:
    """What will run (the scheduler's own pipeline, so dump shows what it runs) and a word on fusion."""
    return DEFAULT_PIPELINE.optimize(gf, backend, fuse), ("on" if fuse else "off")


# -- the analysed graph ----------------------------------------------------------------------

@dataclass
class Prepared:
    target: str
    graph: Graph
    backends: list
    sched: Any
    fusion: str
    report: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)   # id(tensor) -> label
    keys: dict = field(default_factory=dict)     # id(tensor) -> unique key (n<i> / l<i>)
    split_of: dict = field(default_factory=dict)  # id(node) -> split index
    copies: dict = field(default_factory=dict)   # (id(src), split index) -> bytes copied in
    source: Optional[Graph] = None               # the graph as loaded (before fusion)


def label(t: Tensor, labels: dict) -> str:
    return labels.get(id(t)) or t.name or "?"


def _labels(gf: Graph) -> dict:
    """Names as ggml prints them; unnamed tensors are node_<i> / leaf_<i> (the scheduler's
    causes use the same labels: core.graph.graph_labels)."""
    return graph_labels(gf)


def prepare(target: str, params: Optional[dict] = None, backend: str = "cpu", fuse: bool = True,
            graph: Optional[Graph] = None, backends: Optional[list] = None, gguf: Optional[str] = None) -> Prepared:
    """Load (or take) the graph (its leafs bound to a GGUF file's tensors with `gguf`), fuse it
    unless told not to, and plan it on the backends (`backends`, in priority order, overrides
    the --backend kind)."""
    import minigraph as mg

    source = graph if graph is not None else load_target(target, params, gguf)
    backends = backends or backends_for(backend)
    sched = mg.backend_sched_new(backends)
    run, fusion = optimize(source, sched, fuse)  # what the scheduler runs (it fuses the same way)
    gf = run.graph
    sched.reserve(source, fuse=fuse)
    p = Prepared(target, gf, backends, sched, fusion, sched.report(), _labels(gf), source=source)
    p.keys = {id(t): f"{kind}{i}" for kind, ts in (("l", gf.leafs), ("n", gf.nodes)) for i, t in enumerate(ts)}
    for k, split in enumerate(sched.plan.splits):
        for n in split.nodes:
            p.split_of[id(n)] = k
        for cp in split.copies:
            p.copies[(id(cp.src), k)] = cp.nbytes
    return p


def tensor_row(p: Prepared, t: Tensor, index: int) -> dict:
    """One table row: ggml's fields plus placement, split, fused-from and bytes."""
    be = p.sched.get_tensor_backend(t)
    view = None
    if t.view_src is not None:
        view = {"src": label(t.view_src, p.labels), "offs": t.view_offs}
    fused = node_attr(t, "fused_from")
    fused_names = node_attr(t, "fused_names") if fused else None
    split = p.split_of.get(id(t))
    return {"key": p.keys.get(id(t), "?"), "index": index, "op": t.op or "NONE", "name": label(t, p.labels), "type": dtypes.type_name(t.type),
            "ne": list(t.ne), "nb": list(t.nb), "contiguous": is_contiguous(t), "view": view,
            "src": [label(s, p.labels) for s in t.src if s is not None],
            "src_keys": [p.keys.get(id(s), "?") for s in t.src if s is not None],
            "copied_in": [p.copies.get((id(s), split), 0) for s in t.src if s is not None],
            "backend": be.name if be is not None else "-", "split": split,
            "cause": (p.sched.get_tensor_cause(t) or ("", ""))[0],
            "fused_from": list(fused) if fused else [], "fused_names": list(fused_names or []),
            "written_by": written_by(t) if t.op else None, "bytes": nbytes(t)}


def summary(p: Prepared) -> dict:
    gf = p.graph
    from minigraph.core.registry import OPS

    views = sum(1 for n in gf.nodes if OPS[n.op].is_view)
    return {"nodes": len(gf.nodes), "compute_nodes": len(gf.nodes) - views, "views": views,
            "leafs": len(gf.leafs), "splits": p.report["n_splits"], "copies": p.report["n_copies"],
            "bytes_copied": p.report["bytes_copied"], "buffer_size": p.report["buffer_size"],
            "histogram": dict(Counter(n.op for n in gf.nodes).most_common())}


def filtered(rows: list[dict], pattern: Optional[str]) -> list[dict]:
    """Rows whose op or name matches the regex (all rows without one)."""
    if not pattern:
        return rows
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise MinigraphError(f"--filter {pattern!r}: bad regex: {e}") from None
    return [r for r in rows if rx.search(r["op"]) or rx.search(r["name"])]


def rows_of(p: Prepared, pattern: Optional[str] = None) -> tuple[list[dict], list[dict]]:
    nodes = [tensor_row(p, t, i) for i, t in enumerate(p.graph.nodes)]
    leafs = [tensor_row(p, t, i) for i, t in enumerate(p.graph.leafs)]
    return filtered(nodes, pattern), filtered(leafs, pattern)


# -- text ------------------------------------------------------------------------------------

def _ne(ne: list) -> str:
    return "[" + ",".join(str(n) for n in ne) + "]"


def _layout(r: dict) -> str:
    return "cont" if r["contiguous"] else "nb=" + _ne(r["nb"])


def _cells(r: dict) -> list[str]:
    view = f"{r['view']['src']}+{r['view']['offs']}" if r["view"] else ""
    split = "" if r["split"] is None else str(r["split"])
    return [str(r["index"]), r["op"], r["name"], r["type"], _ne(r["ne"]), _layout(r), view,
            ", ".join(r["src"]), r["backend"], split, _fused(r["fused_from"], r["fused_names"]) or _done(r),
            str(r["bytes"])]


def _done(r: dict) -> str:
    """A node another node performs (registry.WRITTEN_BY): the backends skip it."""
    return f"written by its {r['written_by']} (skipped)" if r.get("written_by") else ""


def _fused(ops: list, names: list = ()) -> str:
    """fused-from for the table: the op list (or its size and commonest ops when long), then the
    user names of the absorbed nodes in parentheses: "SILU,MUL (ffn_gate_act)"."""
    if len(ops) <= 4:
        text = ",".join(ops)
    else:
        text = f"{len(ops)} nodes ({','.join(op for op, _ in Counter(ops).most_common(3))},...)"
    if names:
        text += " (" + ", ".join(names[:3]) + (f", +{len(names) - 3} more" if len(names) > 3 else "") + ")"
    return text


HEADER = ["#", "op", "name", "type", "ne", "nb", "view of+offs", "src", "backend", "split", "fused-from", "bytes"]


def table(header: list[str], rows: list[list[str]], right: tuple = ()) -> list[str]:
    """A plain aligned table; columns listed in `right` are right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def totals_lines(s: dict) -> list[str]:
    bufs = ", ".join(f"{k} {v} B" for k, v in s["buffer_size"].items()) or "none"
    hist = ", ".join(f"{op} {n}" for op, n in s["histogram"].items())
    return [f"totals: {s['nodes']} nodes ({s['compute_nodes']} compute, {s['views']} views), {s['leafs']} leafs, "
            f"{s['splits']} splits, {s['copies']} copies ({s['bytes_copied']} B copied)",
            f"compute buffer: {bufs}",
            f"op histogram: {hist}"]


def render_text(p: Prepared, pattern: Optional[str] = None) -> str:
    nodes, leafs = rows_of(p, pattern)
    names = ", ".join(b.name for b in p.backends)
    out = [f"graph {p.target}: backends [{names}], fusion {p.fusion}"]
    if pattern:
        out.append(f"filter {pattern!r}: {len(nodes)} of {len(p.graph.nodes)} nodes, "
                   f"{len(leafs)} of {len(p.graph.leafs)} leafs")
    out.append("")
    out += table(HEADER, [_cells(r) for r in nodes], right=(0, 11))
    if leafs:
        out += ["", "leafs:"]
        out += table(HEADER, [_cells(r) for r in leafs], right=(0, 11))
    out.append("")
    out += totals_lines(summary(p))
    return "\n".join(out) + "\n"


def render_json(p: Prepared, pattern: Optional[str] = None, extra: Optional[dict] = None) -> str:
    nodes, leafs = rows_of(p, pattern)
    doc = {"target": p.target, "backends": [b.name for b in p.backends], "fusion": p.fusion,
           "filter": pattern, "nodes": nodes, "leafs": leafs, "totals": summary(p),
           "splits": p.report["splits"]}
    doc.update(extra or {})
    return json.dumps(doc, indent=1) + "\n"


# -- dot -------------------------------------------------------------------------------------

def _esc(s: str) -> str:
    return re.sub(r'([{}|<>"\\])', r"\\\1", s)


def _dot_label(r: dict) -> str:
    """A record: name | op (type) | ne | nb when not contiguous | view source | fused-from."""
    parts = [r["name"]] + ([] if r["op"] == "NONE" else [r["op"]])
    parts[-1] += f" ({r['type']})"
    parts.append(f"ne {_ne(r['ne'])}")
    if not r["contiguous"]:
        parts.append(f"nb {_ne(r['nb'])}")
    if r["view"]:
        parts.append(f"view of {r['view']['src']} +{r['view']['offs']}")
    if r["fused_from"]:
        parts.append("fused from " + _fused(r["fused_from"], r["fused_names"]))
    if _done(r):
        parts.append(_done(r))
    return "{" + "|".join(_esc(x) for x in parts) + "}"


def render_dot(p: Prepared, pattern: Optional[str] = None) -> str:
    """ggml_graph_dump_dot plus placement: nodes coloured by backend, one cluster per split,
    dashed red edges where the scheduler copies a source into another split."""
    nodes, leafs = rows_of(p, pattern)
    keep = {r["key"] for r in nodes + leafs}
    colour = {b.name: BACKEND_COLOURS[i % len(BACKEND_COLOURS)] for i, b in enumerate(p.backends)}
    out = ["digraph G {", "  newrank = true;", "  rankdir = TB;", '  node [shape=record, style="rounded,filled"];']
    legend = " ".join(f"{name}: {c}" for name, c in colour.items())
    out.append(f'  label = "{_esc(p.target)}  backends: {legend}"; labelloc = t;')
    by_split: dict[Optional[int], list[dict]] = {}
    for r in nodes:
        by_split.setdefault(r["split"], []).append(r)
    for k, rows in by_split.items():
        indent = "  "
        if k is not None:
            out.append(f'  subgraph cluster_split{k} {{ label = "split {k}: {rows[0]["backend"]}"; style = dashed;')
            indent = "    "
        for r in rows:
            out.append(f'{indent}{r["key"]} [fillcolor="{colour.get(r["backend"], "white")}", '
                       f'label="{_dot_label(r)}"];')
        if k is not None:
            out.append("  }")
    for r in leafs:
        out.append(f'  {r["key"]} [fillcolor="{LEAF_COLOUR}", label="{_dot_label(r)}"];')
    for r in nodes:
        for slot, (s, key, copied) in enumerate(zip(r["src"], r["src_keys"], r["copied_in"])):
            if key not in keep:  # a source the filter left out: a dashed stub
                out.append(f'  {key} [style=dashed, fillcolor=white, label="{_esc(s)}"];')
                keep.add(key)
            if copied:
                out.append(f'  {key} -> {r["key"]} [style=dashed, color=red, label="copy {copied} B"];')
            else:
                out.append(f'  {key} -> {r["key"]} [label="src{slot}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def render_graphviz(dot: str, fmt: str) -> bytes:
    """svg/png through Graphviz's `dot`; a clear error when it is not installed."""
    exe = shutil.which("dot")
    if exe is None:
        raise MinigraphError(f"--format {fmt} needs Graphviz's 'dot' program, which is not on PATH: install "
                             "Graphviz (apt install graphviz, brew install graphviz) or use --format dot")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot.encode(), capture_output=True)
    if proc.returncode != 0:
        raise MinigraphError(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace')[-500:]}")
    return proc.stdout
