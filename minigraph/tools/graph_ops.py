"""A model graph's ops as conformance cases: `minigraph export-ops TARGET -o ops.json`, then
`minigraph test-backend-ops --test-file ops.json` (llama.cpp #19896: an op that fails inside a
model becomes a test case without writing one by hand).

Every compute node of the (fused) graph becomes a one-op graph over fresh leaves: each source
keeps its type, ne, nb and byte offset (the chain of VIEW / PERMUTE / ... nodes that made it is
kept, down to the tensor that owns the memory, which becomes a leaf of its own ne), so the
case reads memory laid out exactly as in the model. Identical ops (same op, params and source
layouts, e.g. the same projection in every layer) are one entry with a count.

The file is JSON (format "minigraph-ops", version 1):

    {"format": "minigraph-ops", "version": 1, "source": "examples/graphs.py:mla_decode",
     "ops": [{"op": "MUL_MAT", "count": 2, "names": ["blk.0.wq", ...],
              "graph": <the one-op graph as a minigraph graph file, without data>}, ...]}

Inputs are random at test time: each leaf uniform [-1, 1) (integers [0, 2)), then the values a
source of the op must hold to be well-posed (row indices in range, stable gates, ...) from its
OpDef's `sample`. The tolerance is the largest NMSE the op's own conformance cases allow.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional

import numpy as np

from minigraph.backends.reference import ReferenceResult
from minigraph.core import dtypes
from minigraph.core.cases import CASES, Case
from minigraph.core.context import Context
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.core.registry import OPS, NodeSpec, default_sample, written_by
from minigraph.core.tensor import Tensor, contiguous_strides
from minigraph.tools.graphio import ANNOTATION_PARAMS, graph_from_dict, graph_to_dict

FORMAT = "minigraph-ops"
VERSION = 1
_TYPE_NAMES = tuple(dtypes.type_name(t) for t in (dtypes.TYPE_F16, dtypes.TYPE_BF16, *dtypes.QUANT_TYPES))
MAX_NAMES = 8           # node names kept per entry (the first ones in graph order)
DEFAULT_NMSE = 1e-6     # for an op without conformance cases of its own


# -- export ----------------------------------------------------------------------------------

def _base(t: Tensor) -> Tensor:
    """The tensor a chain of view nodes starts from (a leaf or a computed node)."""
    while t.op is not None and OPS[t.op].is_view:
        t = t.src[0]
    return t


def _op_graph(node: Tensor) -> Graph:
    """`node` made again over fresh leaves: one leaf per distinct base of its sources, the view
    chains between, then the node (its builder checks it as a graph file's loader would)."""
    ctx = Context()
    made: dict[int, Tensor] = {}

    def remake(t: Tensor) -> Tensor:
        if id(t) in made:
            return made[id(t)]
        if t.op is not None and OPS[t.op].is_view:
            srcs = [None if s is None else remake(s) for s in t.src]
            new = OPS[t.op].rebuild(ctx, _spec(t, _offset_from(t, _base(t))), *srcs)
        else:   # a leaf, or a computed input: a leaf of its shape (computed tensors are contiguous)
            if tuple(t.nb) != contiguous_strides(t.type, t.ne):
                raise MinigraphError(f"export-ops: {t.op or 'leaf'} '{t.name}' (an input of {node.op} '{node.name}') "
                                     f"is not contiguous (nb={list(t.nb)}) and is not a view: its layout cannot be a leaf's")
            new = ctx.new_tensor(t.type, 4, list(t.ne))
        new.set_name(t.name)
        made[id(t)] = new
        return new

    srcs = [None if s is None else remake(s) for s in node.src]
    inplace = node.view_src is not None   # it writes a source's memory (ACC, SET_ROWS into a cache, ...)
    dest = next((s for s in node.src if s is not None and s.root is node.root), None) if inplace else None
    out = OPS[node.op].rebuild(ctx, _spec(node, _offset_from(node, _base(dest)) if dest is not None else 0, inplace),
                               *srcs)
    out.set_name(node.name)
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    return gf


def _offset_from(t: Tensor, base: Tensor) -> int:
    """Byte offset of t's memory from the start of `base`'s (both views of one root, or base t's root)."""
    return (t.view_offs if t.view_src is not None else 0) - (base.view_offs if base.view_src is not None else 0)


def _spec(t: Tensor, view_offs: int, inplace: bool = False) -> NodeSpec:
    return NodeSpec(t.type, tuple(t.ne), tuple(t.nb), dict(t.op_params), view_offs, inplace)


def _identity(d: dict) -> str:
    """A one-op graph's identity: its records without names (nor the names a fusion records)."""
    def strip(r: dict) -> dict:
        return {k: ({p: v for p, v in r["op_params"].items() if p not in ANNOTATION_PARAMS} if k == "op_params" else v)
                for k, v in r.items() if k != "name"}
    return json.dumps([strip(r) for r in d["tensors"]], sort_keys=True)


def export_ops(gf: Graph, source: str = "") -> dict:
    """The minigraph-ops document of a graph's compute nodes (module docstring), in graph order.
    A node whose inputs cannot be leaves (a non-contiguous result that is not a view) is listed
    under "skipped" with the reason."""
    entries: dict[str, dict] = {}
    skipped = []
    for node in gf.nodes:
        if OPS[node.op].is_view:
            continue
        if written_by(node):
            skipped.append({"op": node.op, "name": node.name,
                            "why": f"its {written_by(node)} writes it: the backends skip the node"})
            continue
        try:
            d = graph_to_dict(_op_graph(node), data=False)
        except MinigraphError as e:
            skipped.append({"op": node.op, "name": node.name, "why": str(e)})
            continue
        e = entries.setdefault(_identity(d), {"op": node.op, "count": 0, "names": [], "graph": d})
        e["count"] += 1
        if len(e["names"]) < MAX_NAMES and node.name:
            e["names"].append(node.name)
    return {"format": FORMAT, "version": VERSION, "source": source, "ops": list(entries.values()), "skipped": skipped}


def write_ops(doc: dict, path: str) -> None:
    """Write an export_ops document to `path` (JSON)."""
    try:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    except OSError as e:
        raise MinigraphError(f"export-ops: cannot write {path}: {e}") from None


def save_ops(gf: Graph, path: str, source: str = "") -> int:
    """Write export_ops(gf) to `path`; returns the number of entries."""
    doc = export_ops(gf, source)
    write_ops(doc, path)
    return len(doc["ops"])


# -- loading as cases ------------------------------------------------------------------------

def _sig(t: Tensor) -> str:
    """type[ne], with nb and the byte offset when the layout is not a contiguous leaf's."""
    s = f"{dtypes.type_name(t.type)}[{','.join(map(str, t.ne))}]"
    if tuple(t.nb) != contiguous_strides(t.type, t.ne):
        s += f"nb[{','.join(map(str, t.nb))}]"
    if t.view_src is not None and t.view_offs:
        s += f"+{t.view_offs}"
    return s


def _vars(k: int, node: Tensor, count: int, names: list) -> str:
    parts = [f"id={k}"] + [f"src{i}={_sig(s)}" for i, s in enumerate(node.src) if s is not None]
    params = {p: v for p, v in node.op_params.items() if p != "program" and p not in ANNOTATION_PARAMS}
    if params:
        parts.append("params=" + json.dumps(params, sort_keys=True, separators=(",", ":")))
    parts.append(f"count={count}")
    if names:
        parts.append(f"name={names[0]}")
    return ",".join(parts)


def _types_named(text: str) -> set[str]:
    """The ggml type names (f16, q4_K, ...) a case's parameter string mentions."""
    return {n for n in _TYPE_NAMES if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", text)}


def tolerance(op: str, types: set[str]) -> float:
    """The largest NMSE among the op's own conformance cases that use no type outside `types`
    (a quantized or f16 case allows more than an f32 one); DEFAULT_NMSE if the op has no case."""
    mine = [c for c in CASES if c.op == op]
    allowed = types | {"f32", "i32", "i64"}
    fitting = [c for c in mine if _types_named(c.vars) <= allowed] or mine
    return max((c.max_nmse for c in fitting), default=DEFAULT_NMSE)


def input_values(gf: Graph, node: Tensor, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Values for each leaf of a one-op graph (numpy order), keyed by the leaf's position in
    gf.leafs: the default everywhere, then the op's own sample for each source it reads,
    written through that source's strides and offset (not for a block-quantized leaf, whose
    values all go through the quantizer)."""
    op = OPS[node.op]
    mem = ReferenceResult()   # the reference engine's flat per-root memory and its strided views
    for leaf in gf.leafs:
        mem.mem[id(leaf)] = default_sample(leaf, rng).astype(
            np.int64 if leaf.type in dtypes.INT_TYPES else np.float64).reshape(-1)
    for i, s in enumerate(node.src):
        if s is None or i in op.shape_only or op.sample is None:
            continue
        got = op.sample(node, i, rng)
        if got is not None and id(s.root) in mem.mem and not dtypes.is_quantized(s.root.type) and min(s.ne) > 0:
            mem.view4(s)[...] = got   # through s's strides and offset (graph_from_dict checked their bounds)
    return {k: mem.mem[id(leaf)].reshape(tuple(reversed(leaf.ne))) for k, leaf in enumerate(gf.leafs)}


def _compute_node(gf: Graph, op: str) -> Tensor:
    return [n for n in gf.nodes if n.op == op][-1]


def materialize(ctx: Any, d: dict, values: dict[int, np.ndarray]) -> Any:
    """The one-op graph of `d` built in `ctx` (a minigraph Context or ggml-python's, through the
    same builders), leaves holding `values`; returns the op's output tensor."""
    recs = d["tensors"]
    leaf_pos = {i: k for k, i in enumerate(d["leafs"])}
    made: list[Any] = []
    for i, rec in enumerate(recs):
        srcs = [None if s is None else made[s] for s in rec["src"]]
        if rec["op"] is None:
            t = ctx.new_tensor_4d(dtypes.type_from_name(rec["type"]), *rec["ne"])
            t.set_data(values[leaf_pos[i]])
        elif OPS[rec["op"]].is_view and not isinstance(ctx, Context):
            t = _foreign_view(ctx, rec, srcs[0], recs[rec["src"][0]])
        else:
            spec = NodeSpec(dtypes.type_from_name(rec["type"]), tuple(rec["ne"]), tuple(rec["nb"]), rec["op_params"],
                            rec["view_offs"], rec["view_src"] is not None and not OPS[rec["op"]].is_view)
            t = OPS[rec["op"]].rebuild(ctx, spec, *srcs)
        made.append(t)
    return made[d["outputs"][0]]


def _foreign_view(ctx: Any, rec: dict, parent: Any, parent_rec: dict) -> Any:
    """A view node in another engine's context (ggml-python's: its ggml_view_4d, ggml_permute,
    ...), where minigraph's rebuild hooks, which check minigraph tensors, do not apply."""
    op, p = rec["op"], rec["op_params"]
    if op == "PERMUTE":
        return ctx.permute(parent, *(p[f"axis{i}"] for i in range(4)))
    if op == "TRANSPOSE":
        return ctx.transpose(parent)
    if op == "RESHAPE":
        return ctx.reshape_4d(parent, *rec["ne"])
    parent_offs = parent_rec["view_offs"] if parent_rec["view_src"] is not None else 0
    offs = rec["view_offs"] - parent_offs
    if (rec["ne"], rec["nb"], offs) == (parent_rec["ne"], parent_rec["nb"], 0):
        return ctx.view_tensor(parent)
    if rec["nb"][0] != dtypes.type_size(dtypes.type_from_name(rec["type"])):
        raise MinigraphError(f"VIEW with nb0={rec['nb'][0]}: ggml_view_4d keeps the element size as nb0")
    return ctx.view_4d(parent, *rec["ne"], *rec["nb"][1:], offs)


def _case(path: str, k: int, entry: dict, where: str) -> Case:
    try:
        gf = graph_from_dict(entry["graph"])   # the loader's checks: untrusted records are refused here
    except MinigraphError as e:
        raise MinigraphError(f"{where}: {e}") from None
    op = entry["op"]
    if not gf.nodes or gf.nodes[-1].op != op or len(gf.outputs) != 1:
        raise MinigraphError(f"{where}: its graph must end in one {op} node, its output")
    node = _compute_node(gf, op)
    count = entry.get("count", 1)
    names = entry.get("names", [])
    if not isinstance(count, int) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MinigraphError(f"{where}: 'count' must be an integer and 'names' a list of strings")
    graph = entry["graph"]

    def build(ctx: Any, rng: np.random.Generator) -> Any:
        fresh = graph_from_dict(graph)   # the sample functions read a minigraph node
        return materialize(ctx, graph, input_values(fresh, _compute_node(fresh, op), rng))

    types = {dtypes.type_name(t.type) for t in [node, *node.src] if t is not None}
    return Case(op, _vars(k, node, count, names), build, tolerance(op, types), origin=path)


def load_cases(path: str) -> list[Case]:
    """The cases of a minigraph-ops file; a malformed file or entry is a MinigraphError naming it."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise MinigraphError(f"--test-file {path}: cannot read it as a minigraph-ops file (JSON): {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise MinigraphError(f"--test-file {path}: not a minigraph-ops file (format {fmt!r:.40}); "
                             "write one with `minigraph export-ops TARGET -o FILE`")
    if doc.get("version") != VERSION or not isinstance(doc.get("ops"), list):
        raise MinigraphError(f"--test-file {path}: version {doc.get('version')!r:.20} with an 'ops' list expected "
                             f"(this minigraph reads version {VERSION})")
    cases = []
    for k, entry in enumerate(doc["ops"]):
        where = f"--test-file {path}: op #{k}"
        if not isinstance(entry, dict) or not isinstance(entry.get("op"), str) or entry["op"] not in OPS \
                or not isinstance(entry.get("graph"), dict):
            raise MinigraphError(f"{where}: expected an object with a known 'op' and its 'graph'")
        cases.append(_case(path, k, entry, f"{where} ({entry['op']})"))
    if not cases:
        raise MinigraphError(f"--test-file {path}: the file lists no ops")
    return cases


def _ggml_child(argv: list[str]) -> int:
    """`python -m minigraph.tools.graph_ops --test-file FILE [ggml_conformance args]`: the
    child process of `test-backend-ops --test-file FILE --against ggml`."""
    from minigraph.testing import ggml_conformance

    if len(argv) < 2 or argv[0] != "--test-file":
        raise SystemExit("usage: python -m minigraph.tools.graph_ops --test-file FILE [-o OP] [-p REGEX] [--seed N]")
    return ggml_conformance.main(argv[2:], cases=load_cases(argv[1]))


if __name__ == "__main__":
    import sys

    sys.exit(_ggml_child(sys.argv[1:]))
