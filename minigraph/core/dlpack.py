"""Export a tensor's memory as a DLPack capsule (the legacy, unversioned `dltensor` ABI).

numpy exports only host arrays and numba's device arrays export nothing, so minigraph builds the
DLManagedTensor itself: the same code serves host and CUDA memory, and CI exercises it on the
host through np.from_dlpack. The capsule keeps the tensor's buffer alive until the consumer calls
the deleter (or the capsule is dropped unconsumed).
"""
from __future__ import annotations

import ctypes
from typing import Any

from minigraph.core import dtypes
from minigraph.core.buffer import tensor_start
from minigraph.core.errors import MinigraphError, describe

# DLDataType codes: kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4
_DL_TYPES = {dtypes.TYPE_F32: (2, 32), dtypes.TYPE_F16: (2, 16), dtypes.TYPE_BF16: (4, 16),
             dtypes.TYPE_I32: (0, 32)}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]

_LIVE: dict[int, tuple] = {}  # address of a DLManagedTensor -> what it keeps alive


@_DELETER
def _deleter(ptr: Any) -> None:
    _LIVE.pop(ctypes.addressof(ptr.contents), None)


_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CAPSULE_DESTRUCTOR]
# the destructor gets the dying capsule as a raw pointer: never turn it back into a Python object
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


@_CAPSULE_DESTRUCTOR
def _capsule_destructor(capsule_ptr: int) -> None:
    # a consumer renames the capsule "used_dltensor" and owns the deleter call; an unconsumed
    # capsule still named "dltensor" frees its tensor here
    if _capsule_is_valid(capsule_ptr, b"dltensor"):
        _LIVE.pop(_capsule_get_pointer(capsule_ptr, b"dltensor"), None)


def to_dlpack(t: Any) -> Any:
    """A `dltensor` capsule over t's memory: shape reversed(ne[:n_dims]), strides from nb."""
    if t.root._buf is None:
        raise MinigraphError(f"__dlpack__: tensor {describe(t)} has no data: compute it first")
    if t.type not in _DL_TYPES:
        raise MinigraphError(f"__dlpack__: tensor {describe(t)}: type {dtypes.type_name(t.type)} has no DLPack type")
    buf = t.root._buf
    es = dtypes.type_size(t.type)
    if any(s % es for s in t.nb):
        raise MinigraphError(f"__dlpack__: tensor {describe(t)} has strides that are not whole elements")
    nd = t.n_dims
    shape = (ctypes.c_int64 * nd)(*reversed(t.ne[:nd]))
    strides = (ctypes.c_int64 * nd)(*(s // es for s in reversed(t.nb[:nd])))
    dev_type, dev_id = buf.dlpack_device()
    code, bits = _DL_TYPES[t.type]
    m = _DLManagedTensor()
    m.dl_tensor.data = buf.data_ptr()
    m.dl_tensor.device = _DLDevice(dev_type, dev_id)
    m.dl_tensor.ndim = nd
    m.dl_tensor.dtype = _DLDataType(code, bits, 1)
    m.dl_tensor.shape = shape
    m.dl_tensor.strides = strides
    m.dl_tensor.byte_offset = tensor_start(t)
    m.deleter = _deleter
    addr = ctypes.addressof(m)
    _LIVE[addr] = (m, shape, strides, buf)
    return _capsule_new(addr, b"dltensor", _capsule_destructor)
