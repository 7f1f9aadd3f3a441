"""Graph files (`mg.save_graph` / `mg.load_graph`) and the CLI's TARGET loader.

The graph file is JSON (format "minigraph-graph", version 1):

    {"format": "minigraph-graph", "version": 1,
     "tensors": [{"id": 0, "name": "x", "type": "f32", "ne": [8, 4, 1, 1], "nb": [4, 32, 128, 128],
                  "op": null, "op_params": {}, "src": [], "view_src": null, "view_offs": 0,
                  "flags": 0, "data": "<base64 of the root's bytes>"}, ...],
     "leafs": [ids], "nodes": [ids], "outputs": [ids], "attrs": {"<id>": {"fused_from": [...]}}}

Tensors are listed so that every `src` and `view_src` comes before its user. `op` is the ggml
name (upper case, `null` for a leaf), `ne`/`nb` are ggml's (elements, bytes), `view_src` is the
storage root (as in ggml). `data` is present for leaf roots with data when saved with
`data=True` (the bytes from the root's first element to its last, ggml_nbytes of them).

A TARGET is `path/file.py:function` (called as function(ctx, **params); returns a tensor, a
list/tuple of tensors or a Graph) or a graph file.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
import traceback
from typing import Any, Optional, Union

import numpy as np

from minigraph.core import dtypes
from minigraph.core.context import Context
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.core.tensor import Tensor, extent_bytes

FORMAT = "minigraph-graph"
VERSION = 1
_TYPE_BY_NAME = {dtypes.type_name(t): t for t in (dtypes.TYPE_F32, dtypes.TYPE_F16, dtypes.TYPE_I32, dtypes.TYPE_BF16)}
# node attributes that graph passes may set and that a graph file keeps
NODE_ATTRS = ("fused_from",)


class TargetError(MinigraphError):
    """The user's target file failed: `frame` is the user's innermost traceback frame."""

    def __init__(self, msg: str, frame: str = "") -> None:
        super().__init__(msg)
        self.frame = frame


# -- saving ----------------------------------------------------------------------------------

def _ordered_tensors(gf: Graph) -> list[Tensor]:
    """Every tensor the graph refers to, each after its sources and its view source."""
    order: list[Tensor] = []
    seen: set[int] = set()
    for start in gf.leafs + gf.nodes:
        stack: list[tuple[Tensor, bool]] = [(start, False)]
        while stack:
            t, expanded = stack.pop()
            if id(t) in seen:
                continue
            if expanded:
                seen.add(id(t))
                order.append(t)
                continue
            stack.append((t, True))
            deps = [s for s in t.src if s is not None] + ([t.view_src] if t.view_src is not None else [])
            stack.extend((d, False) for d in reversed(deps) if id(d) not in seen)
    return order


def _root_bytes(t: Tensor) -> Optional[bytes]:
    if t.view_src is not None or t._buf is None or not isinstance(t._buf, np.ndarray):
        return None
    n = extent_bytes(t.type, t.ne, t.nb)
    return bytes(np.asarray(t._buf)[t._offs:t._offs + n])


def graph_to_dict(gf: Graph, data: bool = True) -> dict:
    tensors = _ordered_tensors(gf)
    ids = {id(t): k for k, t in enumerate(tensors)}
    out = []
    for t in tensors:
        rec = {"id": ids[id(t)], "name": t.name, "type": dtypes.type_name(t.type), "ne": list(t.ne),
               "nb": list(t.nb), "op": t.op, "op_params": dict(t.op_params),
               "src": [None if s is None else ids[id(s)] for s in t.src],
               "view_src": None if t.view_src is None else ids[id(t.view_src)],
               "view_offs": t.view_offs, "flags": t.flags}
        raw = _root_bytes(t) if data and t.op is None else None
        if raw is not None:
            rec["data"] = base64.b64encode(raw).decode("ascii")
        out.append(rec)
    attrs = {}
    for t in gf.nodes:
        a = {k: getattr(t, k) for k in NODE_ATTRS if getattr(t, k, None) is not None}
        if a:
            attrs[str(ids[id(t)])] = a
    return {"format": FORMAT, "version": VERSION, "tensors": out,
            "leafs": [ids[id(t)] for t in gf.leafs], "nodes": [ids[id(t)] for t in gf.nodes],
            "outputs": [ids[id(t)] for t in gf.outputs], "attrs": attrs}


def save_graph(gf: Graph, path: str, data: bool = True) -> None:
    """Write `gf` to `path` as a minigraph graph file (JSON); data=False leaves out leaf data."""
    if not isinstance(gf, Graph):
        raise MinigraphError(f"save_graph: expected a Graph, got {type(gf).__name__}")
    with open(path, "w") as f:
        json.dump(graph_to_dict(gf, data), f)


# -- loading ---------------------------------------------------------------------------------

def _tensor_from(ctx: Context, rec: dict, by_id: dict[int, Tensor]) -> Tensor:
    type_ = _TYPE_BY_NAME.get(rec["type"])
    if type_ is None:
        raise MinigraphError(f"load_graph: tensor {rec.get('name')!r} has unknown type {rec['type']!r}")
    src = [None if s is None else by_id[s] for s in rec["src"]]
    view_src = None if rec["view_src"] is None else by_id[rec["view_src"]]
    t = Tensor(ctx, type_, rec["ne"], rec["nb"], op=rec["op"], src=src, op_params=rec["op_params"],
               view_src=view_src, view_offs=rec["view_offs"])
    t.name, t.flags = rec["name"], rec["flags"]
    if "data" in rec:
        raw = np.frombuffer(base64.b64decode(rec["data"]), np.uint8)
        t._alloc_root()
        t._buf[:raw.size] = raw
    return ctx._add(t)


def graph_from_dict(d: dict) -> Graph:
    if d.get("format") != FORMAT:
        raise MinigraphError(f"load_graph: not a minigraph graph file (format {d.get('format')!r})")
    if d.get("version") != VERSION:
        raise MinigraphError(f"load_graph: graph file version {d.get('version')!r}, this minigraph reads {VERSION}")
    from minigraph.core.registry import OPS

    ctx = Context()
    by_id: dict[int, Tensor] = {}
    try:
        for rec in d["tensors"]:
            if rec["op"] is not None and rec["op"] not in OPS:
                raise MinigraphError(f"load_graph: tensor {rec['name']!r} has unknown op {rec['op']!r}")
            by_id[rec["id"]] = _tensor_from(ctx, rec, by_id)
    except KeyError as e:
        raise MinigraphError(f"load_graph: malformed graph file (missing {e})") from None
    gf = ctx.new_graph()
    gf.leafs = [by_id[i] for i in d["leafs"]]
    gf.nodes = [by_id[i] for i in d["nodes"]]
    gf.outputs = [by_id[i] for i in d["outputs"]]
    gf._seen = {id(t) for t in gf.leafs + gf.nodes}
    for k, attrs in d.get("attrs", {}).items():
        for name, value in attrs.items():
            _set_attr(by_id[int(k)], name, value)
    return gf


def _set_attr(t: Tensor, name: str, value: Any) -> None:
    try:
        setattr(t, name, value)
    except AttributeError:  # Tensor has __slots__: keep attributes in a side table
        _ATTRS.setdefault(id(t), (t, {}))[1][name] = value


_ATTRS: dict[int, tuple[Tensor, dict]] = {}


def node_attr(t: Tensor, name: str) -> Any:
    """A node attribute set by a graph pass (e.g. fused_from: an attribute or an op param), or None."""
    v = getattr(t, name, None) or t.op_params.get(name)
    if v is None and id(t) in _ATTRS and _ATTRS[id(t)][0] is t:
        v = _ATTRS[id(t)][1].get(name)
    return v


def load_graph(path: str) -> Graph:
    """Read a graph written by save_graph: a fresh Context and Graph (leaf data when saved)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise MinigraphError(f"load_graph: cannot read {path}: {e}") from None
    return graph_from_dict(d)


# -- CLI targets -----------------------------------------------------------------------------

def parse_params(items: list[str]) -> dict[str, Any]:
    """`-p name=value` items: values are Python literals when they parse (64, 1e-6, True), else strings."""
    import ast

    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise MinigraphError(f"parameter {item!r}: expected name=value")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def _user_frame(tb: Any, path: str) -> str:
    """The innermost traceback frame inside the user's file, as 'file:line in fn: code'."""
    frames = [f for f in traceback.extract_tb(tb) if os.path.abspath(f.filename) == os.path.abspath(path)]
    if not frames:
        return ""
    f = frames[-1]
    return f'  File "{f.filename}", line {f.lineno}, in {f.name}\n    {(f.line or "").strip()}'


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise MinigraphError(f"target file {path} not found")
    name = "_minigraph_target_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # the user's module failed to import
        raise TargetError(f"{path}: {type(e).__name__}: {e}", _user_frame(e.__traceback__, path)) from None
    return mod


def _defined_functions(path: str) -> list[str]:
    """The public top-level functions a Python file defines (read with ast, never run)."""
    import ast

    if not os.path.isfile(path):
        raise MinigraphError(f"target file {path} not found")
    try:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError) as e:
        raise MinigraphError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and not n.name.startswith("_")]


def _to_graph(ctx: Context, result: Any, where: str) -> Graph:
    if isinstance(result, Graph):
        return result
    outs = list(result) if isinstance(result, (list, tuple)) else [result]
    if not outs or not all(isinstance(t, Tensor) for t in outs):
        raise MinigraphError(f"{where} must return a tensor, a list/tuple of tensors or a Graph, "
                             f"got {type(result).__name__}")
    gf = ctx.new_graph()
    for t in outs:
        gf.build_forward_expand(t)
    return gf


def load_target(target: str, params: Optional[dict] = None) -> Graph:
    """A Graph from `file.py:function` (called with a fresh Context and **params) or a graph file."""
    params = params or {}
    path, sep, fn_name = target.rpartition(":")
    if target.endswith(".py") or (sep and path.endswith(".py") and not fn_name):
        file = path if sep else target
        have = ", ".join(_defined_functions(file)) or "none"
        raise MinigraphError(f"{target} is a Python file: name the function that builds the graph, "
                             f"{file}:FUNCTION (functions in {file}: {have})")
    if not sep or not path.endswith(".py"):
        if params:
            raise MinigraphError(f"-p parameters apply to a Python target (file.py:function), not {target}")
        return load_graph(target)
    mod = _import_file(path)
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        have = ", ".join(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == mod.__name__)
        raise MinigraphError(f"{path} has no function {fn_name!r} (functions: {have or 'none'})")
    ctx = Context()
    try:
        result = fn(ctx, **params)
    except Exception as e:  # the user's builder failed: show their frame, not minigraph's
        raise TargetError(f"{target}: {type(e).__name__}: {e}", _user_frame(e.__traceback__, path)) from None
    return _to_graph(ctx, result, target)


def fill_random_inputs(gf: Graph, seed: int = 0) -> int:
    """Give every leaf that some node reads and that has no data uniform random values
    ([-1, 1) for floats, [0, 2) for I32 indices); returns how many leafs were filled."""
    from minigraph.core.registry import leafs_needing_data

    rng = np.random.default_rng(seed)
    n = 0
    for leaf in leafs_needing_data(gf):
        if leaf.root._buf is not None:
            continue
        shape = tuple(reversed(leaf.root.ne))
        if leaf.type == dtypes.TYPE_I32:
            leaf.root.set_data(rng.integers(0, 2, size=shape).astype(np.int32))
        else:
            leaf.root.set_data(rng.uniform(-1, 1, size=shape).astype(np.float32))
        n += 1
    return n


def as_graph(obj: Union[Graph, Tensor]) -> Graph:
    if isinstance(obj, Graph):
        return obj
    gf = Graph(obj.ctx)
    gf.build_forward_expand(obj)
    return gf
