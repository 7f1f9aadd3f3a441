"""Matrix and triangular ops: MUL_MAT, OUT_PROD, TRI, FILL, DIAG, SOLVE_TRI.

A matrix is ne [cols, rows]: element (i0, i1) is M[row=i1][col=i0], numpy's M[i1, i0].
"""
from __future__ import annotations

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import expect
from minigraph.core.tensor import Tensor, is_transposed

from minigraph.ops.common import F32, check_float, check_int, check_number
from minigraph.core.registry import OpDef, builder, register

TRI_TYPE_UPPER_DIAG = 0
TRI_TYPE_UPPER = 1
TRI_TYPE_LOWER_DIAG = 2
TRI_TYPE_LOWER = 3


def _bcast(a: np.ndarray, shape) -> np.ndarray:
    """ggml's mul_mat broadcast over dims 2/3: src0 index i = i_dst // ratio (block, not tile)."""
    r3, r2 = shape[0] // a.shape[0], shape[1] // a.shape[1]
    return np.repeat(np.repeat(a, r3, axis=0), r2, axis=1)


def _ref_mul_mat(node, a, b):
    # a [K, M, ...], b [K, N, ...] -> [M, N, ...] = b @ a^T per batch
    return np.matmul(b, np.swapaxes(_bcast(a, b.shape), -1, -2))


def _ref_out_prod(node, a, b):
    # a [M, K, ...], b [N, K, ...] -> [M, N]: dst[n][m] = sum_k a[k][m] * b[k][n]
    return np.matmul(np.swapaxes(b, -1, -2), _bcast(a, b.shape))


MUL_MAT = register(OpDef("MUL_MAT", "linalg", _ref_mul_mat,
                         flops=lambda n: 2.0 * np.prod(n.ne) * n.src[0].ne[0],
                         rebuild=lambda ctx, spec, a, b: ctx.mul_mat(a, b)))
OUT_PROD = register(OpDef("OUT_PROD", "linalg", _ref_out_prod,
                          flops=lambda n: 2.0 * np.prod(n.ne) * n.src[0].ne[1],
                          rebuild=lambda ctx, spec, a, b: ctx.out_prod(a, b)))


def tri_mask(rows: int, cols: int, tri_type: int) -> np.ndarray:
    """Boolean [rows, cols] mask of the kept elements (col i0 vs row i1, as ggml)."""
    i0 = np.arange(cols)[None, :]
    i1 = np.arange(rows)[:, None]
    return {TRI_TYPE_UPPER_DIAG: i0 >= i1, TRI_TYPE_UPPER: i0 > i1,
            TRI_TYPE_LOWER_DIAG: i0 <= i1, TRI_TYPE_LOWER: i0 < i1}[tri_type]


TRI = register(OpDef("TRI", "linalg", lambda node, a, tri_type: np.where(tri_mask(a.shape[2], a.shape[3], tri_type), a, 0.0),
                     params=("tri_type",), rebuild=lambda ctx, spec, a: ctx.tri(a, spec.params.get("tri_type"))))
FILL = register(OpDef("FILL", "linalg", lambda node, a, c: np.full(a.shape, c), params=("c",), shape_only=(0,),
                      float_params=("c",),
                      rebuild=lambda ctx, spec, a: _fill(ctx, a, spec.params.get("c"), spec.inplace, "fill")))


def _ref_diag(node, a):
    out = np.zeros(tuple(reversed(node.ne)))
    idx = np.arange(node.ne[0])
    out[:, :, idx, idx] = a[:, :, 0, :]
    return out


DIAG = register(OpDef("DIAG", "linalg", _ref_diag, rebuild=lambda ctx, spec, a: ctx.diag(a)))


def _ref_solve_tri(node, a, b, left, lower, uni):
    n = a.shape[-1]
    mask = np.tril(np.ones((n, n), bool)) if lower else np.triu(np.ones((n, n), bool))
    tri = np.where(mask, a, 0.0)
    if uni:
        tri = tri * (1 - np.eye(n)) + np.eye(n)
    if left:  # A X = B
        return np.linalg.solve(tri, b)
    # X A = B  <=>  A^T X^T = B^T
    return np.swapaxes(np.linalg.solve(np.swapaxes(tri, -1, -2), np.swapaxes(b, -1, -2)), -1, -2)


def well_conditioned_triangle(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Matrices of numpy shape (..., n, n) whose triangles solve stably: small entries and a
    diagonal of 2 + n/20 (uniform [-1, 1) entries make substitution grow like 2^n)."""
    n = shape[-1]
    return rng.uniform(-0.2, 0.2, size=shape) + np.eye(n) * (2.0 + n * 0.05)


def _sample_solve_tri(node, i: int, rng: np.random.Generator):
    return well_conditioned_triangle(tuple(reversed(node.src[0].ne)), rng) if i == 0 else None


SOLVE_TRI = register(OpDef("SOLVE_TRI", "linalg", _ref_solve_tri, params=("left", "lower", "uni"),
                           flops=lambda n: float(np.prod(n.ne)) * n.src[0].ne[0], sample=_sample_solve_tri,
                           rebuild=lambda ctx, spec, a, b: ctx.solve_tri(
                               a, b, *(spec.params.get(k) for k in ("left", "lower", "uni")))))


@builder("mul_mat")
def mul_mat(ctx, a: Tensor, b: Tensor) -> Tensor:
    """Matrix product with a transposed: result = b @ a^T per matrix (ggml_mul_mat).

    Both operands hold their rows along ne0, so each result element is the dot product of a row
    of a and a row of b. a repeats over dims 2 and 3 in blocks (result batch i2 reads a's
    batch i2 // (ne12 / ne02)), which is how grouped-query attention shares K and V heads.

    a:      [K, M, ne02, ne03] f32/f16/bf16, not transposed (ggml_cont a transposed view first); or
            quantized (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K): then b must be f32, and as
            on ggml's CPU each b row is quantized to the type's vec_dot type (Q8_0, Q8_1 or Q8_K)
            before integer dot products over the blocks.
    b:      [K, N, ne12, ne13] f32/f16/bf16 with ne12 % ne02 == 0 and ne13 % ne03 == 0.
    result: [M, N, ne12, ne13] f32; in numpy indexing, per matrix, result[n, m] = sum_k a[m, k] * b[n, k].
    """
    if isinstance(a, Tensor) and dtypes.is_quantized(a.type):
        check_float("mul_mat", b)
        expect(a.type not in (dtypes.TYPE_Q8_1, dtypes.TYPE_Q8_K), "mul_mat", f"{dtypes.type_name(a.type)} is a "
               "dot-product type only (ggml has no vec_dot for it as src0)", a, b)
        expect(b.type == F32, "mul_mat", f"a quantized src0 ({dtypes.type_name(a.type)}) takes an f32 src1 "
               f"(ggml quantizes it to {dtypes.type_name(dtypes.VEC_DOT_TYPE[a.type])} for the dot products)", a, b)
    else:
        check_float("mul_mat", a, b)
    expect(a.ne[0] == b.ne[0], "mul_mat", "src0 and src1 need the same ne0 (the shared K)", a, b)
    expect(a.ne[2] > 0 and a.ne[3] > 0 and b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0, "mul_mat",
           "src1's ne2/ne3 must be multiples of src0's", a, b)
    expect(not is_transposed(a), "mul_mat", "src0 must not be transposed (ggml_cont it)", a, b)
    return ctx.new_node(MUL_MAT, F32, [a.ne[1], b.ne[1], b.ne[2], b.ne[3]], [a, b])


@builder("out_prod")
def out_prod(ctx, a: Tensor, b: Tensor) -> Tensor:
    """Sum of outer products over the shared ne1 (ggml_out_prod).

    a:      [M, K, ne02, ne03] f32/f16/bf16.
    b:      [N, K, ne12, ne13] f32/f16/bf16 with ne12 % ne02 == 0 and ne13 % ne03 == 0 (a repeats).
    result: [M, N, ne12, ne13] f32; in numpy indexing, per matrix, result[n, m] = sum_k a[k, m] * b[k, n].
    """
    check_float("out_prod", a, b)
    expect(a.ne[1] == b.ne[1], "out_prod", "src0 and src1 need the same ne1", a, b)
    expect(a.ne[2] > 0 and a.ne[3] > 0 and b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0, "out_prod",
           "src1's ne2/ne3 must be multiples of src0's", a, b)
    return ctx.new_node(OUT_PROD, F32, [a.ne[0], b.ne[0], b.ne[2], b.ne[3]], [a, b])


@builder("tri")
def tri(ctx, a: Tensor, type: int) -> Tensor:  # noqa: A002  (ggml's parameter name)
    """Keep one triangle of each matrix and zero the rest (ggml_tri).

    Element (i0, i1) is column i0 of row i1. Extension: ggml asks for square contiguous f32
    matrices; here any [ne0, ne1] shape, float type and strides work.

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    type:   mg.TRI_TYPE_UPPER_DIAG (0: keep i0 >= i1), TRI_TYPE_UPPER (1: i0 > i1),
            TRI_TYPE_LOWER_DIAG (2: i0 <= i1) or TRI_TYPE_LOWER (3: i0 < i1); ggml's enum values.
    result: [ne0, ne1, ne2, ne3] f32, contiguous.
    """
    check_float("tri", a)
    t = check_int("tri", "type", type)
    expect(t in (0, 1, 2, 3), "tri", f"type {t} is not a TRI_TYPE (0 UPPER_DIAG, 1 UPPER, 2 LOWER_DIAG, 3 LOWER)", a)
    return ctx.new_node(TRI, F32, a.ne, [a], params={"tri_type": t})


def _fill(ctx, a: Tensor, c: float, inplace: bool, name: str) -> Tensor:
    check_float(name, a)
    params = {"c": check_number(name, "c", c)}
    if inplace:
        return ctx.new_node(FILL, a.type, a.ne, [a], params=params, nb=a.nb, view_src=a)
    return ctx.new_node(FILL, F32, a.ne, [a], params=params)


@builder("fill")
def fill(ctx, a: Tensor, c: float) -> Tensor:
    """A tensor of a's shape with every element c (ggml_fill); a's values are never read.

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16: gives the shape only.
    c:      the value.
    result: [ne0, ne1, ne2, ne3] f32, contiguous (ggml keeps a's type).
    """
    return _fill(ctx, a, c, False, "fill")


@builder("fill_inplace")
def fill_inplace(ctx, a: Tensor, c: float) -> Tensor:
    """Set every element of a to c (ggml_fill_inplace).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    c:      the value.
    result: a view of a (same ne, type and nb): the op writes a's memory.
    """
    return _fill(ctx, a, c, True, "fill_inplace")


@builder("diag")
def diag(ctx, a: Tensor) -> Tensor:
    """Diagonal matrices from row vectors (ggml_diag): result[i2, i3] = diag(a[i2, i3]).

    a:      [n, 1, ne2, ne3] f32/f16/bf16: one row vector per matrix.
    result: [n, n, ne2, ne3] f32, zero off the diagonal (ggml keeps a's type).
    """
    check_float("diag", a)
    expect(a.ne[1] == 1, "diag", "input must be a row vector per matrix (ne1 == 1)", a)
    return ctx.new_node(DIAG, F32, [a.ne[0], a.ne[0], a.ne[2], a.ne[3]], [a])


@builder("solve_tri")
def solve_tri(ctx, a: Tensor, b: Tensor, left: bool = True, lower: bool = True, uni: bool = False) -> Tensor:
    """Solve a triangular system per matrix: A X = B (left) or X A = B (right) (ggml_solve_tri).

    Only the chosen triangle of A is read; the other one may hold anything. Extension: all eight
    (left, lower, uni) variants run; ggml implements only left=True, lower=True, uni=False, which
    are the defaults here.

    a:      [n, n, ne2, ne3] f32/f16/bf16: A, element (i0, i1) = A[row i1][column i0].
    b:      left: [k, n, ne2, ne3] (n rows of k columns); right: [n, k, ne2, ne3] (k rows of n
            columns); same ne2, ne3 as a.
    left:   True solves A X = B, False solves X A = B. Default True (ggml's only variant).
    lower:  True reads A's lower triangle, False its upper one. Default True (ggml's).
    uni:    True takes A's diagonal as all ones, whatever it holds. Default False (ggml's).
    result: X, same ne as b, f32, contiguous.
    """
    check_float("solve_tri", a, b)
    flags = {}
    for name, v in (("left", left), ("lower", lower), ("uni", uni)):
        expect(isinstance(v, (bool, int, np.bool_)) and int(v) in (0, 1), "solve_tri", f"{name} must be a bool", a, b)
        flags[name] = int(v)
    n = a.ne[0]
    expect(a.ne[1] == n, "solve_tri", "A must be square (ne0 == ne1)", a, b)
    expect(a.ne[2] == b.ne[2] and a.ne[3] == b.ne[3], "solve_tri", "A and B need the same batch dims (ne2, ne3)", a, b)
    if flags["left"]:
        expect(b.ne[1] == n, "solve_tri", f"left solve needs B with ne1 == {n} (A's size)", a, b)
    else:
        expect(b.ne[0] == n, "solve_tri", f"right solve needs B with ne0 == {n} (A's size)", a, b)
    return ctx.new_node(SOLVE_TRI, F32, b.ne, [a, b], params=flags)
