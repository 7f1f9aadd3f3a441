"""GGUF files through the `gguf` package (llama.cpp's own reader and writer): `mg.gguf_load`,
`mg.gguf_save`, `mg.gguf_bind` (existing leaves take a file's tensors by name: how a graph target
runs on a model's weights, `minigraph dump file.py:fn --gguf FILE.gguf`), and the listing
`minigraph dump FILE.gguf` prints.

A loaded tensor is a leaf whose memory IS the file's bytes: the file is memory-mapped
copy-on-write (numpy.memmap mode "c"), so nothing is read until a kernel touches it, and a graph
that writes a loaded tensor changes the process's pages, never the file. GGUF's ne order is
ggml's (ne0 first) and its tensor types are ggml's enum, so a tensor keeps its name, type and ne.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from minigraph.core import dtypes
from minigraph.core.buffer import wrap_host_array
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.tensor import MAX_DIMS, Tensor, is_contiguous, nbytes, nelements, row_size

# keys the reader reports about the file itself, not metadata the file carries
_FILE_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise MinigraphError("GGUF files need the `gguf` package (llama.cpp's reader/writer): "
                             "pip install 'minigraph[gguf]'") from None
    return gguf


class GGUFMetadata(dict):
    """The file's key/value metadata (plain Python values); `types[key]` keeps each value's GGUF
    type (and an array's element type) so gguf_save writes it back unchanged."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.types: dict[str, tuple] = {}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file as `minigraph dump` lists it: name, ggml type, ne, bytes, offset."""

    name: str
    type: int
    ne: tuple
    nbytes: int
    offset: int


def _reader(path: Union[str, os.PathLike], mode: str = "r") -> Any:
    gguf = _gguf()
    if not os.path.isfile(path):
        raise MinigraphError(f"gguf: no file {os.fspath(path)!r}")
    try:
        return gguf.GGUFReader(path, mode)
    except (ValueError, OSError, KeyError) as e:
        raise MinigraphError(f"gguf: {os.fspath(path)!r} is not a readable GGUF file: {e}") from None


def _metadata(reader: Any) -> GGUFMetadata:
    meta = GGUFMetadata()
    for key, field in reader.fields.items():
        if key in _FILE_KEYS:
            continue
        meta[key] = field.contents()
        meta.types[key] = tuple(field.types)
    return meta


def gguf_info(path: Union[str, os.PathLike]) -> tuple[list[GGUFTensorInfo], GGUFMetadata]:
    """The tensor table and metadata of a GGUF file, without making tensors."""
    reader = _reader(path)
    infos = [GGUFTensorInfo(t.name, int(t.tensor_type), tuple(int(n) for n in t.shape), int(t.n_bytes),
                            int(t.data_offset)) for t in reader.tensors]
    return infos, _metadata(reader)


def gguf_load(path: Union[str, os.PathLike], ctx: Any) -> tuple[dict[str, Tensor], GGUFMetadata]:
    """Every tensor of a GGUF file as a leaf of `ctx` over the memory-mapped file (no copy), and
    the file's metadata: `tensors, meta = mg.gguf_load("model.gguf", ctx)`.

    Each leaf has the file's name, ggml type (f32, f16, bf16, q4_0, q4_K, ...) and ne (ggml's
    order); its bytes are the file's pages, mapped copy-on-write. A tensor of a type minigraph
    does not know is refused with its name."""
    reader = _reader(path, "c")
    out: dict[str, Tensor] = {}
    for rt in reader.tensors:
        type_ = int(rt.tensor_type)
        if type_ not in dtypes.QUANT_TYPES and type_ not in (dtypes.TYPE_F32, dtypes.TYPE_F16, dtypes.TYPE_BF16,
                                                            dtypes.TYPE_I32, dtypes.TYPE_I64):
            raise MinigraphError(f"gguf_load: tensor '{rt.name}' of {os.fspath(path)!r} has ggml type {type_} "
                                 f"({getattr(rt.tensor_type, 'name', '?')}), which minigraph does not have")
        ne = [int(n) for n in rt.shape] or [1]
        if len(ne) > MAX_DIMS:
            raise MinigraphError(f"gguf_load: tensor '{rt.name}' has {len(ne)} dims (ggml has at most 4)")
        leaf = ctx.new_tensor(type_, len(ne), ne)
        raw = np.asarray(rt.data).reshape(-1).view(np.uint8)
        if raw.size != nbytes(leaf):
            raise MinigraphError(f"gguf_load: tensor '{rt.name}' holds {raw.size} bytes, its type and ne need "
                                 f"{nbytes(leaf)} ({describe(leaf)})")
        leaf._buf, leaf._offs = wrap_host_array(raw, "gguf_load"), 0
        leaf.set_name(rt.name)
        out[rt.name] = leaf
    return out, _metadata(reader)


def _shape_text(type_: int, ne: Sequence[int]) -> str:
    return f"{dtypes.type_name(type_)} ne {list(ne)}"


def gguf_bind(path: Union[str, os.PathLike], tensors: Iterable[Tensor]) -> list[Tensor]:
    """Give each of `tensors` (leaves with names) the bytes of the file's tensor of that name,
    memory-mapped copy-on-write as gguf_load does (no copy): a graph built with placeholder or
    random weights then computes with the model's. Refused with a MinigraphError, before any
    tensor changes: a name the file lacks, a type or ne that differs from the file's (both
    shown), a view, a tensor that is not contiguous. Returns the bound tensors."""
    reader = _reader(path, "c")
    file = {rt.name: rt for rt in reader.tensors}
    where = os.fspath(path)
    plan = []
    for t in tensors:
        rt = file.get(t.name)
        if rt is None:
            have = ", ".join(list(file)[:8]) + (", ..." if len(file) > 8 else "")
            raise MinigraphError(f"gguf_bind: {where!r} has no tensor '{t.name}' (the graph's {describe(t)}); "
                                 f"the file has {len(file)}: {have or 'none'}")
        ne = tuple([int(n) for n in rt.shape] + [1] * (MAX_DIMS - len(rt.shape)))[:MAX_DIMS]
        type_ = int(rt.tensor_type)
        if (type_, ne) != (t.type, tuple(t.ne)):
            found = _shape_text(type_, ne) if type_ in dtypes.TYPE_NAMES else f"ggml type {type_}, ne {list(ne)}"
            raise MinigraphError(f"gguf_bind: tensor '{t.name}': the graph expects {_shape_text(t.type, t.ne)}, "
                                 f"{where!r} has {found}")
        if t.view_src is not None or not is_contiguous(t):
            raise MinigraphError(f"gguf_bind: tensor '{t.name}' is a view or not contiguous ({describe(t)}): "
                                 "only a contiguous leaf can take a file's bytes")
        raw = np.asarray(rt.data).reshape(-1).view(np.uint8)
        if raw.size != nbytes(t):
            raise MinigraphError(f"gguf_bind: tensor '{t.name}' holds {raw.size} bytes in {where!r}, "
                                 f"{describe(t)} needs {nbytes(t)}")
        plan.append((t, raw))
    for t, raw in plan:
        t._buf, t._offs = wrap_host_array(raw, "gguf_bind"), 0
    return [t for t, _ in plan]


def _value_type(gguf: Any, v: Any) -> Any:
    T = gguf.GGUFValueType
    if isinstance(v, (bool, np.bool_)):
        return T.BOOL
    if isinstance(v, (int, np.integer)):
        return T.UINT32 if 0 <= int(v) < 2 ** 32 else T.INT64
    if isinstance(v, (float, np.floating)):
        return T.FLOAT32
    if isinstance(v, (str, bytes)):
        return T.STRING
    if isinstance(v, (list, tuple)):
        return T.ARRAY
    raise MinigraphError(f"gguf_save: metadata value {v!r:.60} has no GGUF type (bool, int, float, str or a list)")


def gguf_save(path: Union[str, os.PathLike], tensors: Union[Mapping[str, Tensor], Sequence[Tensor]],
              metadata: Mapping[str, Any] = ()) -> None:
    """Write tensors (a name -> Tensor mapping, or tensors named with set_name) and metadata
    (key -> bool/int/float/str/list) as a GGUF file. Each tensor keeps its ggml type and ne and
    its bytes in logical order; a mapping from gguf_load writes its values back with their
    original GGUF types. `general.architecture` defaults to "minigraph"."""
    gguf = _gguf()
    items = list(tensors.items()) if isinstance(tensors, Mapping) else [(t.name, t) for t in tensors]
    meta = dict(metadata)
    types = getattr(metadata, "types", {})
    writer = gguf.GGUFWriter(os.fspath(path), str(meta.pop("general.architecture", "minigraph")))
    try:
        for key, value in meta.items():
            vt = types.get(key) or (_value_type(gguf, value),)
            sub = vt[1] if len(vt) > 1 else None
            if vt[0] == gguf.GGUFValueType.ARRAY and sub is None and len(value):
                sub = _value_type(gguf, value[0])
            writer.add_key_value(key, value, vt[0], sub_type=sub)
        for name, t in items:
            if not isinstance(t, Tensor):
                raise MinigraphError(f"gguf_save: '{name}' is a {type(t).__name__}, not a Tensor")
            if not name:
                raise MinigraphError(f"gguf_save: tensor {describe(t)} has no name (set_name it or pass a mapping)")
            if t.root._buf is None:
                raise MinigraphError(f"gguf_save: tensor '{name}' has no data (compute or set_data it first)")
            raw = np.ascontiguousarray(t.root._buf.get(t)).view(np.uint8)
            n = max(t.n_dims, 1)
            row = row_size(t.type, t.ne[0])
            shape = tuple(reversed(t.ne[1:n])) + (row,)
            if nelements(t) == 0:
                raise MinigraphError(f"gguf_save: tensor '{name}' is empty")
            writer.add_tensor(name, raw.reshape(shape), raw_dtype=gguf.GGMLQuantizationType(t.type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
