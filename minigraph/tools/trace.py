"""`minigraph trace`: every node's value after a run, as llama.cpp's llama-eval-callback prints
them (#17914, #17028, #19331): op, name, type, ne and sources, then the sum, min, max, mean and
count of NaN/inf; with -v the first and last values along each dim. --filter keeps the nodes
whose op or name match; --stop-at-nan ends at the first node whose output holds a NaN or inf
(exit status 1), which names the node where a NaN is born.

The graph runs as the scheduler runs it (after the fusion passes unless --no-fuse) with every
compute node kept as an output, so no buffer is reused and each value is the node's own; that
is also why tracing a graph takes more memory than computing it, and why the values equal a
plain run's (the same kernels on the same inputs).
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.tools.compare import checked_tensors, run_way, stats
from minigraph.tools.dump import label

EDGE = 3    # values shown at each end of a dim with -v (ggml's eval-callback shows 3)


def _shape_text(t: Any) -> str:
    return f"{dtypes.type_name(t.type)}[{','.join(map(str, t.ne))}]"


def node_record(index: int, t: Any, value: np.ndarray, labels: dict, edge: int = 0) -> dict:
    """What trace prints of one tensor: identity, sources and statistics (values with edge > 0)."""
    a = np.asarray(value, np.float64)
    fin = np.isfinite(a)
    rec = {"index": index, "op": t.op, "name": label(t, labels), "type": dtypes.type_name(t.type), "ne": list(t.ne),
           "src": [f"{label(s, labels)} {_shape_text(s)}" for s in t.src if s is not None],
           **stats(a), "sum": float(a[fin].sum()) if fin.any() else None, "nan": int(np.isnan(a).sum())}
    if edge:
        n = max([t.n_dims] + [i + 1 for i, x in enumerate(t.ne) if x == 0])
        rec["values"] = np.array2string(a.reshape(tuple(reversed(t.ne[:n]))), threshold=0, edgeitems=edge,
                                        precision=6, max_line_width=100, separator=", ")
    return rec


def trace(gf: Graph, way: str, labels: dict, pattern: Optional[str] = None, stop_at_nan: bool = False,
          edge: int = 0) -> dict:
    """Run gf on `way` (cpu, cuda, auto, reference; the graph as given, no further fusion) and
    record each compute node, and each output that is a view, in topological order."""
    try:
        rx = re.compile(pattern) if pattern else None
    except re.error as e:
        raise MinigraphError(f"--filter {pattern!r}: bad regex: {e}") from None
    with np.errstate(all="ignore"):   # a NaN or inf is what a trace looks for, not a warning
        run = run_way(gf, way, fuse=False)
    index = {id(n): i for i, n in enumerate(gf.nodes)}
    records, first_bad = [], None
    for t in checked_tensors(gf):
        value = run.values[id(t)]
        bad = not np.isfinite(value).all()
        shown = rx is None or rx.search(t.op or "") or rx.search(label(t, labels))
        if shown or (stop_at_nan and bad):
            records.append(node_record(index.get(id(t), -1), t, value, labels, edge))
        if stop_at_nan and bad:
            first_bad = records[-1]
            break
    return {"way": way, "nodes": records, "traced": len(records), "of": len(checked_tensors(gf)),
            "first_nonfinite": first_bad}


def _num(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.6g}"


def render(res: dict) -> str:
    lines = []
    for r in res["nodes"]:
        src = f"({', '.join(r['src'])})" if r["src"] else ""
        lines.append(f"{r['index']:>4}  {r['op']}{src} -> '{r['name']}' {r['type']}[{','.join(map(str, r['ne']))}]")
        bad = f"  non-finite {r['nonfinite']} ({r['nan']} NaN)" if r["nonfinite"] else ""
        lines.append(f"      sum {_num(r['sum'])}  min {_num(r['min'])}  max {_num(r['max'])}  mean {_num(r['mean'])}{bad}")
        if "values" in r:
            lines += ["      " + ln for ln in r["values"].splitlines()]
    head = f"trace on {res['way']}: {res['traced']} of {res['of']} nodes"
    if res["first_nonfinite"] is not None:
        b = res["first_nonfinite"]
        lines.append(f"stopped: node {b['index']} {b['op']} '{b['name']}' is the first whose output is not finite")
    return head + "\n" + "\n".join(lines) + "\n"


def render_json(res: dict) -> str:
    return json.dumps(res, indent=1) + "\n"

