"""ggml's element types (same enum values as ggml.h) and their numpy storage.

Plain types store one element per `type_size` bytes. Block-quantized types (Q4_0 ... Q8_K) store
`blck_size` consecutive elements of a row (along ne0) in one block of `type_size` bytes, laid out
exactly as ggml's `block_q*` structs (ggml-common.h); `BLOCK_DTYPES` spells each struct as a numpy
structured dtype. A quantized tensor has nb[0] = the block's bytes and ne0 a multiple of the
block length, like ggml's.
"""
from __future__ import annotations

import numpy as np

from minigraph.core.blocks import (BLCK as _BLCK, BLOCK_DTYPES, K_SCALE_SIZE, QK, QK_K, QUANT_NAMES,  # noqa: F401
                                   QUANT_TYPES, TYPE_Q4_0, TYPE_Q4_1, TYPE_Q4_K, TYPE_Q5_0, TYPE_Q5_1,
                                   TYPE_Q5_K, TYPE_Q6_K, TYPE_Q8_0, TYPE_Q8_1, TYPE_Q8_K, VEC_DOT_TYPE)
from minigraph.core.errors import TYPE_NAMES, MinigraphError

TYPE_F32 = 0
TYPE_F16 = 1
TYPE_I32 = 26
TYPE_I64 = 27
TYPE_BF16 = 30

# storage dtype of one element; BF16 is kept as its raw 16 bits; quantized rows as raw bytes
_STORAGE = {TYPE_F32: np.dtype(np.float32), TYPE_F16: np.dtype(np.float16),
            TYPE_I32: np.dtype(np.int32), TYPE_I64: np.dtype(np.int64), TYPE_BF16: np.dtype(np.uint16)}
_STORAGE.update({t: np.dtype(np.uint8) for t in QUANT_TYPES})
_NAMES = {TYPE_F32: "f32", TYPE_F16: "f16", TYPE_I32: "i32", TYPE_I64: "i64", TYPE_BF16: "bf16", **QUANT_NAMES}
_FROM_NUMPY = {np.dtype(np.float32): TYPE_F32, np.dtype(np.float16): TYPE_F16,
               np.dtype(np.int32): TYPE_I32, np.dtype(np.int64): TYPE_I64}
FLOAT_TYPES = (TYPE_F32, TYPE_F16, TYPE_BF16)
TYPE_NAMES.update(_NAMES)  # so errors.describe names types without importing this module
INT_TYPES = (TYPE_I32, TYPE_I64)


def check_type(type_: int, op: str = "new_tensor") -> int:
    if type_ not in _STORAGE:
        known = ", ".join(f"{v}={k}" for k, v in _NAMES.items())
        raise MinigraphError(f"{op}: unsupported type {type_!r} (known: {known})")
    return int(type_)


def is_quantized(type_: int) -> bool:
    """ggml_is_quantized: a block type (Q4_0 ... Q8_K)."""
    return type_ in BLOCK_DTYPES


def blck_size(type_: int) -> int:
    """ggml_blck_size: elements per block (1 for plain types, 32 or 256 for quantized ones)."""
    return _BLCK.get(check_type(type_), 1)


def type_size(type_: int) -> int:
    """ggml_type_size: bytes per block (per element for plain types)."""
    t = check_type(type_)
    return BLOCK_DTYPES[t].itemsize if t in BLOCK_DTYPES else _STORAGE[t].itemsize


def type_name(type_: int) -> str:
    """ggml_type_name: "f32", "f16", "bf16", "i32", "q4_0", "q4_K" (ggml's spelling); "type<n>" if unknown."""
    return _NAMES.get(type_, f"type{type_}")


def type_from_name(name: str) -> int:
    """The type whose ggml name is `name` (case-insensitive: "q4_k" and "Q4_K" both work)."""
    for t, n in _NAMES.items():
        if n.lower() == str(name).lower():
            return t
    raise MinigraphError(f"unknown ggml type name {name!r} (known: {', '.join(_NAMES.values())})")


def storage_dtype(type_: int) -> np.dtype:
    return _STORAGE[check_type(type_)]


def type_from_numpy(dtype: np.dtype, op: str = "from_numpy") -> int:
    dt = np.dtype(dtype)
    if dt == np.float64:
        return TYPE_F32  # converted on the way in, as users expect from numpy defaults
    if dt not in _FROM_NUMPY:
        raise MinigraphError(f"{op}: numpy dtype {dt} has no ggml type (use float32, float16, int32, int64)")
    return _FROM_NUMPY[dt]


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as ggml_compute_fp32_to_bf16 does (NaN stays quiet NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, ((u >> 16) | 64).astype(np.uint16), rounded)
    return rounded


def to_float(raw: np.ndarray, type_: int) -> np.ndarray:
    """Storage values -> float32 (I32/I64 stay int32/int64). Quantized: raw row bytes
    (..., row bytes) -> dequantized rows (..., ne0)."""
    if type_ in BLOCK_DTYPES:
        from minigraph.core.quants import dequantize

        return dequantize(raw, type_)
    if type_ == TYPE_BF16:
        return bf16_to_f32(raw)
    if type_ == TYPE_F16:
        return raw.astype(np.float32)
    return raw


def from_float(x: np.ndarray, type_: int) -> np.ndarray:
    """float values -> storage values for `type_` (quantized: rows (..., ne0) -> row bytes,
    with ggml's reference quantizer)."""
    if type_ in BLOCK_DTYPES:
        from minigraph.core.quants import quantize

        return quantize(np.asarray(x, np.float32), type_)
    if type_ == TYPE_BF16:
        return f32_to_bf16(np.asarray(x, dtype=np.float32))
    return np.asarray(x).astype(_STORAGE[type_], copy=False)
