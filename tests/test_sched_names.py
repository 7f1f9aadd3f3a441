"""The scheduler's causes, report and debug log name tensors as `minigraph dump` prints them."""
import re

import numpy as np

import minigraph as mg
from minigraph.schedule.report import format_log
from minigraph.tools import dump


def _graph():
    """Unnamed tensors (labels leaf_<i> / node_<i>), one named node, a view of an unnamed node."""
    ctx = mg.Context()
    a = ctx.from_numpy(np.ones((4, 8), np.float32))
    y = ctx.l2_norm(ctx.add(a, a), 1e-6)
    z = ctx.sum_rows(ctx.view_2d(y, 4, 4, y.nb[1], 0)).set_name("z")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, z)
    return gf


def test_causes_and_log_use_the_names_dump_prints():
    p = dump.prepare("names", graph=_graph(), fuse=False)
    table = dump.render_text(p)
    printed = {r["name"] for rows in dump.rows_of(p) for r in rows}
    assert {"leaf_0", "node_0", "node_1", "z"} <= printed
    rep = p.sched.report()
    for pl in rep["placements"]:
        assert pl["name"] in printed, pl
        for quoted in re.findall(r"'([^']*)'", pl["detail"]):   # e.g. "memory of 'node_1' on CPU"
            assert quoted in printed, pl
    views = [pl for pl in rep["placements"] if pl["op"] == "VIEW"]
    assert views and views[0]["detail"] == "memory of 'node_1' on CPU"
    assert all(n["name"] in printed for s in rep["splits"] for n in s["nodes"])
    assert all(o in printed for s in rep["splits"] for o in s["outputs"])
    log = format_log(p.sched, p.sched.plan, p.graph)   # MINIGRAPH_SCHED_DEBUG's text
    lines = [ln.split() for ln in log.splitlines() if ln.startswith("  ")]
    assert len(lines) == len(p.graph.leafs) + len(p.graph.nodes)
    assert {ln[3] for ln in lines} <= printed and "@" not in log
    assert " z " in table
