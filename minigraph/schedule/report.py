"""The scheduler's decisions as data (`sched.report()`, for the dump CLI) and as the
MINIGRAPH_SCHED_DEBUG log (ggml's GGML_SCHED_DEBUG, with every cause spelled out)."""
from __future__ import annotations

from typing import Any

from minigraph.core.graph import Graph


def _name(t: Any, plan: Any) -> str:
    """The name `minigraph dump` prints for t (the plan's graph_labels), so a cause or a split
    line can be looked up in the dump."""
    return plan.labels.get(id(t)) or t.name or f"<{t.op or 'leaf'} outside the graph>"


def report(sched: Any, plan: Any) -> dict:
    """Splits, copies, bytes copied, compute-buffer bytes and every placement with its cause."""
    names = [b.name for b in sched.backends]
    splits = []
    for k, s in enumerate(plan.splits):
        splits.append({
            "index": k,
            "backend": names[s.backend],
            "nodes": [{"op": n.op, "name": _name(n, plan)} for n in s.nodes],
            "copies": [{"tensor": _name(c.src, plan), "copy": c.dst.name, "from": names[c.src_backend],
                        "to": names[c.dst_backend], "ne": list(c.src.ne), "nb": list(c.src.nb),
                        "nbytes": c.nbytes} for c in s.copies],
            "outputs": [_name(t, plan) for t in s.graph.outputs],
        })
    placements = []
    for tid, t in plan.tensors.items():
        tag, detail = plan.cause[tid]
        placements.append({"name": _name(t, plan), "op": t.op or "NONE", "leaf": t.op is None,
                           "backend": names[plan.assign[tid]], "cause": tag, "detail": detail})
    copies = [c for s in plan.splits for c in s.copies]
    last = len(names) - 1
    pairs: dict[str, int] = {}
    for c in copies:
        key = f"{names[c.src_backend]}->{names[c.dst_backend]}"
        pairs[key] = pairs.get(key, 0) + c.nbytes
    lm = plan.layers
    return {
        "backends": names,
        "n_splits": len(plan.splits),
        "n_copies": len(copies),
        "bytes_copied": sum(c.nbytes for c in copies),
        "bytes_between_devices": sum(c.nbytes for c in copies if last not in (c.src_backend, c.dst_backend)),
        "copies_by_pair": pairs,
        "buffer_size": {names[i]: n for i, n in sorted(plan.buffer_size.items())},
        "tensor_split": None if lm is None else list(lm.fractions),
        "layers": None if lm is None else {("output" if k == lm.n_layer else k): names[d]
                                           for k, d in enumerate(lm.devices)},
        "row_splits": [{"node": _name(n, plan), "gather": names[plan.assign[id(g)]],
                        "parts": [{"backend": names[plan.assign[id(p)]], "rows": [lo, lo + p.ne[0]]}
                                  for p, lo in parts]}
                       for n, parts, g in plan.row_splits],
        "splits": splits,
        "placements": placements,
    }


def format_log(sched: Any, plan: Any, gf: Graph) -> str:
    """One line per leaf and node (backend, cause, detail), then the splits with their copies."""
    names = [b.name for b in sched.backends]
    width = max(len(n) for n in names)
    rep = report(sched, plan)
    lines = [f"sched: {len(gf.leafs)} leafs, {len(gf.nodes)} nodes on [{', '.join(names)}]: "
             f"{rep['n_splits']} splits, {rep['n_copies']} copies ({rep['bytes_copied']} bytes), "
             f"compute buffers {rep['buffer_size']}"]
    if rep["bytes_between_devices"] or rep["layers"] or rep["row_splits"]:
        lines.append(f"  between devices: {rep['bytes_between_devices']} bytes per run {rep['copies_by_pair']}")
    if rep["layers"]:
        lines.append(f"  layer split {rep['tensor_split']}: " +
                     ", ".join(f"{k}->{d}" for k, d in rep["layers"].items()))
    for r, (_, parts, gather) in zip(rep["row_splits"], plan.row_splits):
        lines.append(f"  row split {r['node']}: " + ", ".join(f"{p['backend']} rows {p['rows'][0]}..{p['rows'][1]}"
                                                               for p in r["parts"]) + f"; gathered on {r['gather']}")
        for t in [p for p, _ in parts] + ([gather] if gather.op == "CONCAT" else []):
            tag, detail = plan.cause[id(t)]
            lines.append(f"    {t.op:>16} {_name(t, plan):<24} [{names[plan.assign[id(t)]]:>{width}}] {tag}: {detail}")
    for kind, ts in (("leaf", gf.leafs), ("node", gf.nodes)):
        for k, t in enumerate(ts):
            if id(t) not in plan.assign:
                continue
            tag, detail = plan.cause[id(t)]
            lines.append(f"  {kind} {k:4d} {t.op or 'NONE':>16} {_name(t, plan):<24} "
                         f"[{names[plan.assign[id(t)]]:>{width}}] {tag}: {detail}")
    for s in rep["splits"]:
        ins = ", ".join(f"{c['tensor']} ({c['from']}->{c['to']}, {c['nbytes']} B)" for c in s["copies"])
        lines.append(f"## SPLIT #{s['index']}: {s['backend']} # {len(s['nodes'])} nodes, "
                     f"{len(s['copies'])} inputs: [{ins}]")
        for c in s["copies"]:
            lines.append(f"    copy: {c['tensor']} ne={c['ne']} nb={c['nb']} -> {c['copy']} ({c['nbytes']} bytes)")
    return "\n".join(lines)


def print_log(sched: Any, plan: Any, gf: Graph) -> None:
    print(format_log(sched, plan, gf), flush=True)
