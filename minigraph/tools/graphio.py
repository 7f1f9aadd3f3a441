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

Loading treats the file as untrusted (see "-- loading" below): a field of the wrong type, leaf
data of the wrong size, a node its op's builder would not make as recorded, or nodes out of
topological order is a MinigraphError naming the tensor (id, name, op) and the field.

A TARGET is `path/file.py:function` (called as function(ctx, **params); returns a tensor, a
list/tuple of tensors or a Graph) or a graph file.
"""
from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
import sys
import traceback
from typing import Any, Optional, Union

import numpy as np

from minigraph.core import dtypes, flags
from minigraph.core.context import Context
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.passes import Optimized
from minigraph.core.registry import OPS
from minigraph.core.tensor import MAX_NAME, Tensor, extent_bytes

FORMAT = "minigraph-graph"
VERSION = 1
_TYPE_BY_NAME = {dtypes.type_name(t): t for t in (dtypes.TYPE_F32, dtypes.TYPE_F16, dtypes.TYPE_I32, dtypes.TYPE_I64, dtypes.TYPE_BF16,
                                                  *dtypes.QUANT_TYPES)}
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
    if t.view_src is not None or t._buf is None or not t._buf.is_host:
        return None
    n = extent_bytes(t.type, t.ne, t.nb)
    return bytes(t._buf.data[t._offs:t._offs + n])


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
    """Write `gf` (or an mg.optimize result's graph) to `path` as a minigraph graph file (JSON);
    data=False leaves out leaf data."""
    if isinstance(gf, Optimized):
        gf = gf.graph
    if not isinstance(gf, Graph):
        raise MinigraphError(f"save_graph: expected a Graph, got {type(gf).__name__}")
    with open(path, "w") as f:
        json.dump(graph_to_dict(gf, data), f)


# -- loading ---------------------------------------------------------------------------------
# A graph file is untrusted input: every field is type-checked, every leaf gets exactly its
# declared bytes, and every node is made again through its op's builder (OpDef.rebuild), with the
# builders' checks and the view-bounds check; the rebuilt node must then agree with the record
# (type, ne, nb, src, view_src, view_offs, op_params) or the file is refused.

RECORD_KEYS = ("id", "name", "type", "ne", "nb", "op", "op_params", "src", "view_src", "view_offs", "flags")
FILE_KEYS = ("format", "version", "tensors", "leafs", "nodes", "outputs", "attrs")
# op_params that only record provenance (set by the fusion passes): type-checked, then kept as written
ANNOTATION_PARAMS = {"fused_from": list, "fused_pattern": str, "fused_names": list}
MAX_NE = 1 << 40          # elements along one dim; larger is a corrupt file, not a model
MAX_ELEMENTS = 1 << 44
MAX_NB = 1 << 56
ALL_FLAGS = 1 | 2 | 4     # FLAG_INPUT | FLAG_OUTPUT | FLAG_PARAM


class _Where:
    """Names the record being read in every error: `tensor #3 'ffn_gate' (MUL_MAT)`."""

    def __init__(self, k: int) -> None:
        self.text = f"tensor #{k}"

    def fail(self, field: str, msg: str) -> MinigraphError:
        return MinigraphError(f"load_graph: {self.text}: field '{field}': {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(where: _Where, rec: dict, field: str, lo: int, hi: int) -> list[int]:
    v = rec[field]
    if not isinstance(v, list) or len(v) != 4 or not all(_is_int(x) for x in v):
        raise where.fail(field, f"expected a list of 4 integers, got {v!r:.80}")
    if not all(lo <= x <= hi for x in v):
        raise where.fail(field, f"{v} has a value outside {lo}..{hi}")
    return v


def _ref_id(where: _Where, field: str, v: Any, k: int) -> Optional[int]:
    """A tensor id that must come before tensor k (the file lists sources first)."""
    if v is None:
        return None
    if not _is_int(v) or not 0 <= v < k:
        raise where.fail(field, f"{v!r:.40} is not the id of an earlier tensor (0..{k - 1})")
    return v


def _check_record(rec: Any, k: int) -> _Where:
    """Types and ranges of one record's fields (not yet their consistency with each other)."""
    where = _Where(k)
    if not isinstance(rec, dict):
        raise where.fail("-", f"expected an object, got {type(rec).__name__}")
    if isinstance(rec.get("name"), str):  # name the tensor in every message, if the file lets us
        where.text = f"tensor #{k} '{rec['name'][:MAX_NAME]}'"
    for key in RECORD_KEYS:
        if key not in rec:
            raise where.fail(key, "missing")
    extra = set(rec) - set(RECORD_KEYS) - {"data"}
    if extra:
        raise where.fail(sorted(extra)[0], "unknown field")
    if not _is_int(rec["id"]) or rec["id"] != k:
        raise where.fail("id", f"{rec['id']!r:.40} != its position {k} in 'tensors'")
    name = rec["name"]
    if not isinstance(name, str) or len(name) >= MAX_NAME:
        raise where.fail("name", f"expected a string of at most {MAX_NAME - 1} characters, got {name!r:.80}")
    where.text = f"tensor #{k} '{name}'"
    op = rec["op"]
    if op is not None and (not isinstance(op, str) or op not in OPS):
        raise where.fail("op", f"unknown op {op!r:.40} (ggml names in upper case: {', '.join(sorted(OPS)[:6])}, ...)")
    where.text += f" ({op or 'leaf'})"
    if not isinstance(rec["type"], str) or rec["type"] not in _TYPE_BY_NAME:
        raise where.fail("type", f"unknown type {rec['type']!r:.40} (known: {', '.join(_TYPE_BY_NAME)})")
    ne = _int_list(where, rec, "ne", 0, MAX_NE)
    _int_list(where, rec, "nb", -MAX_NB, MAX_NB)
    if int(np.prod([float(n) for n in ne])) > MAX_ELEMENTS:
        raise where.fail("ne", f"{ne} has more than {MAX_ELEMENTS} elements")
    if not isinstance(rec["op_params"], dict):
        raise where.fail("op_params", f"expected an object, got {type(rec['op_params']).__name__}")
    if not isinstance(rec["src"], list):
        raise where.fail("src", f"expected a list of ids, got {type(rec['src']).__name__}")
    for i, s_ in enumerate(rec["src"]):
        _ref_id(where, f"src[{i}]", s_, k)
    _ref_id(where, "view_src", rec["view_src"], k)
    if not _is_int(rec["view_offs"]) or not 0 <= rec["view_offs"] <= MAX_NB:
        raise where.fail("view_offs", f"expected a non-negative integer, got {rec['view_offs']!r:.40}")
    if not _is_int(rec["flags"]) or rec["flags"] & ~ALL_FLAGS or rec["flags"] < 0:
        raise where.fail("flags", f"expected a combination of the flags {ALL_FLAGS}, got {rec['flags']!r:.40}")
    for key, kind in ANNOTATION_PARAMS.items():
        v = rec["op_params"].get(key)
        if v is not None and not (isinstance(v, kind) and (kind is str or all(isinstance(x, str) for x in v))):
            raise where.fail(f"op_params.{key}", f"expected {'a string' if kind is str else 'a list of strings'}")
    return where


def _leaf(ctx: Context, rec: dict, where: _Where) -> Tensor:
    """A leaf made by new_tensor (so contiguous), holding exactly the bytes the record declares."""
    for field, empty in (("src", []), ("view_src", None), ("view_offs", 0), ("op_params", {})):
        if rec[field] != empty:
            raise where.fail(field, f"a leaf has {empty!r} here, got {rec[field]!r:.60}")
    t = ctx.new_tensor(_TYPE_BY_NAME[rec["type"]], 4, rec["ne"])
    if rec["nb"] != list(t.nb):
        raise where.fail("nb", f"{rec['nb']} is not the contiguous layout {list(t.nb)} of a leaf ne={rec['ne']}")
    if "data" in rec:
        if not isinstance(rec["data"], str):
            raise where.fail("data", f"expected a base64 string, got {type(rec['data']).__name__}")
        try:
            raw = base64.b64decode(rec["data"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise where.fail("data", f"not valid base64: {e}") from None
        want = extent_bytes(t.type, t.ne, t.nb)
        if len(raw) != want:
            raise where.fail("data", f"{len(raw)} bytes, the tensor (type {rec['type']}, ne={rec['ne']}) has {want}")
        t.alloc_host()
        t._buf.data[:want] = np.frombuffer(raw, np.uint8)
    return t


def _canonical(params: dict) -> str:
    """op_params as a canonical string: types matter (1 is not true, 1 is not 1.0), order does not."""
    try:
        return json.dumps({k: v for k, v in params.items() if k not in ANNOTATION_PARAMS}, sort_keys=True)
    except (TypeError, ValueError) as e:
        return f"<not JSON: {e}>"


def _node(ctx: Context, rec: dict, where: _Where, by_id: list, ids: dict) -> Tensor:
    """The node rebuilt through its op's builder, refused unless it matches the record."""
    from minigraph.core.registry import NodeSpec

    if "data" in rec:
        raise where.fail("data", "only leafs carry data")
    op = OPS[rec["op"]]
    srcs = [None if s_ is None else by_id[s_] for s_ in rec["src"]]
    params = {**op.param_defaults, **rec["op_params"]}   # a file from before a param existed
    spec = NodeSpec(_TYPE_BY_NAME[rec["type"]], tuple(rec["ne"]), tuple(rec["nb"]), params,
                    rec["view_offs"], rec["view_src"] is not None and not op.is_view)
    try:
        t = op.rebuild(ctx, spec, *srcs)
    except MinigraphError as e:
        raise where.fail("src/op_params", f"the {op.name} builder refuses the record: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise where.fail("src/op_params", f"does not fit the {op.name} builder ({len(srcs)} sources, "
                         f"op_params {sorted(rec['op_params'])}): {type(e).__name__}: {e}") from None
    got = {"type": dtypes.type_name(t.type), "ne": list(t.ne), "nb": list(t.nb),
           "src": [None if s_ is None else ids.get(id(s_)) for s_ in t.src],
           "view_src": None if t.view_src is None else ids.get(id(t.view_src)), "view_offs": t.view_offs}
    for field, value in got.items():
        if rec[field] != value:
            raise where.fail(field, f"{rec[field]!r:.80} in the file, but {op.name} of these sources gives {value!r:.80}")
    if _canonical(params) != _canonical(t.op_params):
        raise where.fail("op_params", f"{_canonical(params)[:120]} in the file, but {op.name} of these "
                         f"arguments records {_canonical(t.op_params)[:120]}")
    for key in ANNOTATION_PARAMS:
        if key in rec["op_params"]:
            t.op_params[key] = rec["op_params"][key]
    return t


def _id_list(d: dict, key: str, n: int) -> list[int]:
    v = d[key]
    if not isinstance(v, list) or not all(_is_int(i) and 0 <= i < n for i in v):
        raise MinigraphError(f"load_graph: '{key}' must be a list of tensor ids 0..{n - 1}, got {v!r:.80}")
    if len(set(v)) != len(v):
        raise MinigraphError(f"load_graph: '{key}' lists a tensor twice")
    return v


def _graph_lists(d: dict, recs: list, tensors: list) -> tuple[list, list, list]:
    """leafs (the op-less tensors), nodes (the others, each after its sources), outputs."""
    n = len(tensors)
    leafs, nodes, outputs = (_id_list(d, key, n) for key in ("leafs", "nodes", "outputs"))
    for i in leafs:
        if recs[i]["op"] is not None:
            raise MinigraphError(f"load_graph: 'leafs' lists tensor #{i} '{recs[i]['name']}', which has op {recs[i]['op']}")
    seen = set(leafs)
    for i in nodes:
        if recs[i]["op"] is None:
            raise MinigraphError(f"load_graph: 'nodes' lists tensor #{i} '{recs[i]['name']}', which is a leaf")
        for s_ in [*recs[i]["src"], recs[i]["view_src"]]:
            if s_ is not None and s_ not in seen:
                raise MinigraphError(f"load_graph: 'nodes' is not in topological order: tensor #{i} "
                                     f"'{recs[i]['name']}' reads tensor #{s_} '{recs[s_]['name']}', which comes later or "
                                     "is not in the graph")
        seen.add(i)
    if len(seen) != n:
        k = min(set(range(n)) - seen)
        raise MinigraphError(f"load_graph: tensor #{k} '{recs[k]['name']}' is in neither 'leafs' nor 'nodes'")
    bad = [i for i in outputs if i not in seen]
    if bad:
        raise MinigraphError(f"load_graph: 'outputs' lists tensor #{bad[0]}, which is not in the graph")
    return leafs, nodes, outputs


def graph_from_dict(d: Any) -> Graph:
    """A Graph from a parsed graph file (see the module docstring); every refusal is a
    MinigraphError naming the tensor (id, name, op) and the field."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise MinigraphError(f"load_graph: not a minigraph graph file (format {fmt!r:.40})")
    if d.get("version") != VERSION or isinstance(d.get("version"), bool):
        raise MinigraphError(f"load_graph: graph file version {d.get('version')!r:.40}, this minigraph reads {VERSION}")
    for key in FILE_KEYS:
        if key not in d and key != "attrs":
            raise MinigraphError(f"load_graph: malformed graph file (missing '{key}')")
    extra = set(d) - set(FILE_KEYS)
    if extra:
        raise MinigraphError(f"load_graph: unknown top-level field {sorted(extra)[0]!r}")
    recs = d["tensors"]
    if not isinstance(recs, list):
        raise MinigraphError("load_graph: 'tensors' must be a list of tensor records")
    ctx = Context()
    by_id: list[Tensor] = []
    ids: dict[int, int] = {}
    for k, rec in enumerate(recs):
        where = _check_record(rec, k)
        t = _leaf(ctx, rec, where) if rec["op"] is None else _node(ctx, rec, where, by_id, ids)
        t.set_name(rec["name"])
        t.flags = rec["flags"]
        ids[id(t)] = k
        by_id.append(t)
    leafs, nodes, outputs = _graph_lists(d, recs, by_id)
    gf = ctx.new_graph()
    gf.leafs = [by_id[i] for i in leafs]
    gf.nodes = [by_id[i] for i in nodes]
    gf.outputs = [by_id[i] for i in outputs]
    gf._seen = {id(t) for t in gf.leafs + gf.nodes}
    attrs = d.get("attrs", {})
    if not isinstance(attrs, dict):
        raise MinigraphError("load_graph: 'attrs' must be an object {tensor id: {attribute: value}}")
    for k, a in attrs.items():
        if not (isinstance(k, str) and k.isdigit() and int(k) in nodes) or not isinstance(a, dict):
            raise MinigraphError(f"load_graph: attrs[{k!r:.20}] must name a node id and hold an object")
        for name, value in a.items():
            if name not in NODE_ATTRS or not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
                raise MinigraphError(f"load_graph: tensor #{k} '{recs[int(k)]['name']}': field 'attrs.{name!s:.40}': "
                                     f"expected one of {NODE_ATTRS} holding a list of strings")
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
    """Read a graph written by save_graph: a fresh Context and Graph (leaf data when saved).

    The file is untrusted: see graph_from_dict; nothing in it can make minigraph read or write
    outside a tensor's memory."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8, huge ints
        raise MinigraphError(f"load_graph: cannot read {path} as a graph file (JSON): {e}") from None
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


# names llama.cpp's GGUF files give model weights: a leaf named so must come from the --gguf file
WEIGHT_SUFFIXES = (".weight", ".bias")


def bind_gguf(gf: Graph, path: str) -> list[Tensor]:
    """The graph's leafs take the GGUF file's tensors of their names (mg.gguf_bind: memory-mapped,
    no copy, type and ne checked). A leaf named like a model weight (*.weight, *.bias) must be in
    the file; another leaf (an input) takes a file tensor only if one has its name."""
    from minigraph.core.gguf_io import gguf_bind, gguf_info

    names = {info.name for info in gguf_info(path)[0]}
    leafs = [t for t in gf.leafs if t.name and (t.name in names or t.name.endswith(WEIGHT_SUFFIXES))]
    if not leafs:
        raise MinigraphError(f"--gguf {path}: no leaf of the graph is named like a tensor of the file "
                             f"(leafs: {', '.join(t.name or '?' for t in gf.leafs[:8])})")
    return gguf_bind(path, leafs)


def load_target(target: str, params: Optional[dict] = None, gguf: Optional[str] = None) -> Graph:
    """A Graph from `file.py:function` (called with a fresh Context and **params) or a graph file;
    with `gguf` (a GGUF file) its leafs take the file's tensors by name (bind_gguf)."""
    gf = _load_target(target, params)
    if gguf:
        bind_gguf(gf, gguf)
    return gf


def _load_target(target: str, params: Optional[dict]) -> Graph:
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


def fill_random_inputs(gf: Graph, seed: int = 0, max_bytes: Optional[int] = None) -> int:
    """Give every leaf that some node reads and that has no data uniform random values
    ([-1, 1) for floats, [0, 2) for I32 indices); returns how many leafs were filled.

    Refused with a MinigraphError, before anything is allocated, when the leafs' storage plus
    the float64 draw of the largest one exceeds `max_bytes` (default
    flags.random_input_max_bytes(), MINIGRAPH_RANDOM_INPUT_MAX_BYTES): a graph file or a
    target can declare any ne, and a terabyte of random numbers is never what was meant."""
    from minigraph.memory.scaffold import leafs_needing_data

    budget = flags.random_input_max_bytes() if max_bytes is None else max_bytes
    roots: dict[int, Tensor] = {}
    for leaf in leafs_needing_data(gf):
        if leaf.root._buf is None:
            roots.setdefault(id(leaf.root), leaf.root)
    sizes = {k: _elements(r) * dtypes.type_size(r.type) for k, r in roots.items()}
    if roots:
        big = max(roots, key=lambda k: sizes[k])
        need = sum(sizes.values()) + 8 * _elements(roots[big])   # + the float64 draw of the largest
        if need > budget:
            raise MinigraphError(
                f"random inputs: {len(roots)} leafs without data need {need} bytes ({need / 2**30:.1f} GiB), "
                f"over the budget of {budget} bytes; the largest is {describe(roots[big])} ({sizes[big]} bytes). "
                "Give the large inputs data, or raise MINIGRAPH_RANDOM_INPUT_MAX_BYTES")
    rng = np.random.default_rng(seed)
    n = 0
    for leaf in roots.values():
        shape = tuple(reversed(leaf.ne))
        if leaf.type == dtypes.TYPE_I32:
            leaf.set_data(rng.integers(0, 2, size=shape).astype(np.int32))
        else:
            leaf.set_data(rng.uniform(-1, 1, size=shape).astype(np.float32))
        n += 1
    return n


def _elements(t: Tensor) -> int:
    """ne0*ne1*ne2*ne3 as a Python int (no overflow for absurd ne; negative ne counts as 0)."""
    n = 1
    for x in t.ne:
        n *= max(int(x), 0)
    return n


def as_graph(obj: Union[Graph, Tensor]) -> Graph:
    if isinstance(obj, Graph):
        return obj
    gf = Graph(obj.ctx)
    gf.build_forward_expand(obj)
    return gf
