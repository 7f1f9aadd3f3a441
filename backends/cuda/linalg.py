"""CUDA kernels of the linalg family: MUL_MAT, OUT_PROD, TRI, FILL, DIAG, SOLVE_TRI.

A matrix is ne [cols, rows]: element (i0, i1) is M[row=i1][col=i0]. src0 broadcasts over dims
2/3 as ggml does: batch (i2, i3) reads src0 batch (i2 // r2, i3 // r3). All tensors are read
through their strides (common.py); dst never shares memory with a source.
"""
from __future__ import annotations

from numba import cuda, float32, float64

from minigraph.core.registry import register_kernel

from minigraph.backends import scalar_math
from minigraph.backends.cuda.common import SIM, CudaKernel, Launch, at, f32_only, flat_launch, ne, nelem, size, unflat

tri_keep = cuda.jit(device=True)(scalar_math.tri_keep)

# MUL_MAT: a TILE x TILE block computes a TILE x TILE tile of dst, walking K in TILE steps
# through shared memory (rows padded by one against bank conflicts). Plain f32 FMA, no tensor
# cores: correctness and strides first.
TILE = 4 if SIM else 16
TILE_PAD = TILE + 1    # shared-array shapes must be compile-time constants
MAX_GRID_Z = 65535


@cuda.jit
def mul_mat(meta, dst, a, b):
    """dst (m, n, i2, i3) = sum_k a (k, m, i2 // r2, i3 // r3) * b (k, n, i2, i3)."""
    sa = cuda.shared.array((TILE, TILE_PAD), float32)
    sb = cuda.shared.array((TILE, TILE_PAD), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    M = ne(meta, 0, 0)
    N = ne(meta, 0, 1)
    n2 = ne(meta, 0, 2)
    K = ne(meta, 1, 0)
    i2 = cuda.blockIdx.z % n2
    i3 = cuda.blockIdx.z // n2
    j2 = i2 // (n2 // ne(meta, 1, 2))
    j3 = i3 // (ne(meta, 0, 3) // ne(meta, 1, 3))
    m_base = cuda.blockIdx.x * TILE
    n_base = cuda.blockIdx.y * TILE
    acc = float32(0.0)
    for k0 in range(0, K, TILE):
        k = k0 + tx
        ma = m_base + ty
        nb_ = n_base + ty
        sa[ty, tx] = a[at(meta, 1, k, ma, j2, j3)] if (k < K and ma < M) else float32(0.0)
        sb[ty, tx] = b[at(meta, 2, k, nb_, i2, i3)] if (k < K and nb_ < N) else float32(0.0)
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sa[tx, kk] * sb[ty, kk]
        cuda.syncthreads()
    m = m_base + tx
    n = n_base + ty
    if m < M and n < N:
        dst[at(meta, 0, m, n, i2, i3)] = acc


@cuda.jit
def out_prod(meta, dst, a, b):
    """dst (m, n, i2, i3) = sum_k a (m, k, i2 // r2, i3 // r3) * b (n, k, i2, i3)."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        m, n, i2, i3 = unflat(meta, 0, i)
        j2 = i2 // (ne(meta, 0, 2) // ne(meta, 1, 2))
        j3 = i3 // (ne(meta, 0, 3) // ne(meta, 1, 3))
        acc = float32(0.0)
        for k in range(ne(meta, 1, 1)):
            acc += a[at(meta, 1, m, k, j2, j3)] * b[at(meta, 2, n, k, i2, i3)]
        dst[at(meta, 0, m, n, i2, i3)] = acc


@cuda.jit
def tri(meta, dst, a, tri_type):
    """Keep (col i0, row i1) where the TRI_TYPE test holds: 0 i0 >= i1, 1 i0 > i1, 2 i0 <= i1, 3 i0 < i1."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        keep = tri_keep(i0, i1, tri_type)
        dst[at(meta, 0, i0, i1, i2, i3)] = a[at(meta, 1, i0, i1, i2, i3)] if keep else float32(0.0)


@cuda.jit
def fill(meta, dst, a, c):
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        dst[at(meta, 0, i0, i1, i2, i3)] = float32(c)


@cuda.jit
def diag(meta, dst, a):
    """a [n, 1, ne2, ne3] -> dst [n, n, ne2, ne3], a's row on the diagonal."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        dst[at(meta, 0, i0, i1, i2, i3)] = a[at(meta, 1, i0, 0, i2, i3)] if i0 == i1 else float32(0.0)


@cuda.jit
def solve_tri(meta, dst, a, b, left, lower, uni):
    """One thread per system, f64 accumulation, x kept in dst as it is solved.

    left:  A X = B, B [k, n]: column v of B is one system A x = b.
    right: X A = B, B [n, k]: row v of B is one system A^T x = b.
    T[i, j] is A[i, j] (left) or A[j, i] (right); the substitution runs forward when
    left == lower. Only A's lower/upper triangle is read, its diagonal not at all when uni.
    """
    t = cuda.grid(1)
    n = ne(meta, 1, 0)
    n_sys = ne(meta, 2, 0) if left else ne(meta, 2, 1)
    n2 = ne(meta, 2, 2)
    if t < n_sys * n2 * ne(meta, 2, 3):
        v = t % n_sys
        i2 = (t // n_sys) % n2
        i3 = t // (n_sys * n2)
        forward = (lower != 0) == (left != 0)
        for step in range(n):
            i = step if forward else n - 1 - step
            j_lo = 0 if forward else i + 1
            j_hi = i if forward else n
            s = float64(b[at(meta, 2, v, i, i2, i3)] if left else b[at(meta, 2, i, v, i2, i3)])
            for j in range(j_lo, j_hi):
                tij = a[at(meta, 1, j, i, i2, i3)] if left else a[at(meta, 1, i, j, i2, i3)]
                xj = dst[at(meta, 0, v, j, i2, i3)] if left else dst[at(meta, 0, j, v, i2, i3)]
                s -= tij * xj
            if not uni:
                s /= a[at(meta, 1, i, i, i2, i3)]
            if left:
                dst[at(meta, 0, v, i, i2, i3)] = s
            else:
                dst[at(meta, 0, i, v, i2, i3)] = s


def _mul_mat_launches(node):
    M, N, n2, n3 = node.ne
    if M * N * n2 * n3 == 0:
        return []
    return [Launch(mul_mat, (-(-M // TILE), -(-N // TILE), n2 * n3), (TILE, TILE))]


def _mul_mat_supports(node):
    if node.ne[2] * node.ne[3] > MAX_GRID_Z:
        return f"MUL_MAT: CUDA kernel batches over grid z: ne2*ne3 = {node.ne[2] * node.ne[3]} > {MAX_GRID_Z}"
    return f32_only(node)


def _solve_tri_launches(node):
    b = node.src[1]
    n_sys = b.ne[0] if node.op_params["left"] else b.ne[1]
    return [flat_launch(solve_tri, n_sys * b.ne[2] * b.ne[3])]


def _flat(kernel, name):
    return CudaKernel(lambda node: [flat_launch(kernel, nelem(node.ne))], name)


register_kernel("MUL_MAT", "cuda", CudaKernel(_mul_mat_launches, "mul_mat"), supports=_mul_mat_supports)
register_kernel("OUT_PROD", "cuda", _flat(out_prod, "out_prod"), supports=f32_only)
register_kernel("TRI", "cuda", _flat(tri, "tri"), supports=f32_only)
register_kernel("FILL", "cuda", _flat(fill, "fill"), supports=f32_only)
register_kernel("DIAG", "cuda", _flat(diag, "diag"), supports=f32_only)
register_kernel("SOLVE_TRI", "cuda", CudaKernel(_solve_tri_launches, "solve_tri"), supports=f32_only)
