"""Row split (llama.cpp's `-sm row`): a MUL_MAT whose weight lives in a split buffer
(mg.split_buffer_type) runs one part per device where the weight's rows live, and the scheduler
gathers the parts' result rows on the split buffer's main device.

MUL_MAT(w [K, N], x [K, M, B2, B3]) = dst [N, M, B2, B3]: dst's ne0 is w's row index, so the part
over rows [lo, hi) of w, MUL_MAT(w[lo:hi] [K, hi-lo], x), is dst's rows lo..hi along ne0, and the
whole result is the CONCAT of the parts along dim 0 in row order. The scheduler replaces the node
in its node list by the parts (each placed on its rows' device, x copied to every device that needs
it), then the gathering CONCATs on the main device (the last one starts a split of its own, so the
other devices' parts are copied in after the main device has launched its part). The user's node
keeps its identity: its memory is bound to the gathered result, so its readers (and t.numpy())
see the value. A split weight read any other way is refused.
"""
from __future__ import annotations

from typing import Any

from minigraph.core.errors import MinigraphError, describe
from minigraph.core.tensor import Tensor
from minigraph.device.split_buffer import SplitBuffer


def _split_buffer(t: Any) -> Any:
    buf = t.root._buf if t is not None else None
    return buf if isinstance(buf, SplitBuffer) else None


def pass0_row_split(st: Any) -> None:
    """Expand st.nodes: every MUL_MAT on a row-split weight becomes parts + gather."""
    if not any(_split_buffer(s) is not None for n in st.nodes for s in n.src):
        return
    nodes = []
    for node in st.nodes:
        for k, s in enumerate(node.src):
            buf = _split_buffer(s)
            if buf is not None and not (node.op == "MUL_MAT" and k == 0 and s is s.root):
                raise MinigraphError(
                    f"{node.op}: {describe(node)} reads {describe(s)} (src[{k}]), which lives row-split in "
                    f"{buf!r}: only MUL_MAT with the whole weight as src0 can read a split weight "
                    "(allocate it with mg.backend_tensor_alloc(backend, t) on one device instead)")
        buf = _split_buffer(node.src[0]) if node.op == "MUL_MAT" else None
        if buf is None:
            nodes.append(node)
            continue
        nodes.extend(_expand(st, node, buf))
    st.nodes = nodes


def _expand(st: Any, node: Tensor, buf: SplitBuffer) -> list:
    w, x = node.src[0], node.src[1]
    main = st.index_of(buf.backend, f"main device of the split weight '{w.name}'")
    homes = [(st.index_of(buf.buft.backends[i], f"rows {lo}..{hi} of '{w.name}'"), lo, hi, part)
             for i, lo, hi, part in buf.parts]
    names = [b.name for b in st.backends]
    rows = ", ".join(f"{names[i]} rows {lo}..{hi}" for i, lo, hi, _ in homes)
    st.assign(w, main, "weights/buffer", f"row-split: {rows}")
    parts = []   # (device, row_low, part node), in row order
    for i, lo, hi, wpart in homes:
        st.assign(wpart, i, "weights/buffer", f"rows {lo}..{hi} of '{w.name}' in {names[i]} memory")
        p = Tensor(node.ctx, node.type, (hi - lo, *node.ne[1:]), op="MUL_MAT", src=[wpart, x],
                   op_params=node.op_params)
        p.name = f"{node.name or 'mul_mat'}[rows {lo}..{hi}]"
        sup = st.supports(i, p)
        if not sup:
            raise MinigraphError(f"MUL_MAT: row split of {describe(node)}: {names[i]} cannot run its part "
                                 f"{describe(p)}: {sup.reason}")
        st.assign(p, i, "row split", f"rows {lo}..{hi} of '{w.name}' live on {names[i]}")
        parts.append((i, lo, p))
    # run order: the other devices' parts first, the main device's last (they overlap on GPUs)
    order = [p for i, _, p in sorted(parts, key=lambda e: e[0] == main)]
    acc = parts[0][2]
    gathers = []
    for _, _, p in parts[1:]:
        ne = (acc.ne[0] + p.ne[0], *acc.ne[1:])
        acc = Tensor(node.ctx, node.type, ne, op="CONCAT", src=[acc, p], op_params={"dim": 0})
        acc.name = f"{node.name or 'mul_mat'}#gather"
        sup = st.supports(main, acc)
        if not sup:
            raise MinigraphError(f"MUL_MAT: row split of {describe(node)}: the main device {names[main]} "
                                 f"cannot gather the parts (CONCAT {describe(acc)}): {sup.reason}")
        st.assign(acc, main, "row split", f"gathers the rows of '{node.name}' on the main device {names[main]}")
        gathers.append(acc)
    if gathers:
        st.split_before.add(id(gathers[0]))
    where = main if gathers else parts[0][0]
    st.assign(node, where, "row split", f"{rows}; gathered on {names[where]}")
    st.alias[id(acc)] = node
    st.plan.row_splits.append((node, [(p, lo) for _, lo, p in parts], acc))
    st.forced = True
    return order + gathers
