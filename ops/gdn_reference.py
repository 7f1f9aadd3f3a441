"""float64 numpy reference of ggml's GATED_DELTA_NET (Qwen3-Next/Qwen3.5 GDA, Kimi Linear KDA).

Layout (ggml ne order; numpy shapes are reversed):
  q, k   [S, H_k, T, n_seqs_qk]    v     [S, H_v, T, n_seqs]
  g      [1 or S, H_v, T, n_seqs]  beta  [1, H_v, T, n_seqs]
  state  [S, S, H_v, n_seqs], transposed: element [j*S + i] is S[i][j] (i key index, j value index)
  out    [S*H_v, T*n_seqs + K*S*n_seqs]: attention [S, H_v, T, n_seqs], then K state snapshots,
         each [S, S, H_v, n_seqs] in the transposed layout of `state`.

Per token t, for every (seq, value head):
  S[i][j] *= exp(g[i])        (GDA: one scalar per head; KDA: g is indexed by the KEY index i)
  delta[j] = (v[j] - sum_i S[i][j] k[i]) * beta
  S[i][j] += k[i] * delta[j]
  out[j]   = sum_i S[i][j] q[i] / sqrt(S)

Verified against the real ggml_gated_delta_net (ggml-python 0.0.45, CPU backend, through
minigraph.testing.ggml_bridge; tests/test_delta_net_ggml.py) on GDA, KDA, GQA (H_v = 2*H_k and
H_v = 3*H_k), n_seqs 1/2/4, q/k sequence broadcast, K = 1, 2, 3 with T = 5, 2, 1: max abs error
1.4e-7 (float32 ggml vs this float64 reference). What ggml does, as found there:
  * head mapping: value head h reads q/k head h % H_k (tiled, like ggml_repeat), not h // (H_v/H_k);
  * sequence broadcast: with n_seqs_qk dividing n_seqs, value sequence n reads q/k sequence
    n // (n_seqs / n_seqs_qk) (checked with n_seqs = 4, n_seqs_qk = 2, where n % 2 would differ);
  * KDA decay: exp(g[i]) scales the state along the key index i (row i of S, i.e. the fastest index
    of the stored state), the index contracted with k and q;
  * snapshots: slot 0 is the final state, slot s the state after token T-1-s, i.e. s tokens back;
  * slots s >= T (K > T): ggml does not write them at all; they keep whatever the output buffer held
    (a NaN sentinel written before compute survives). This reference ZEROES them; compare only the
    first min(T, K) slots against ggml. llama.cpp copies only min(n_tokens, K) slots out.
"""
from __future__ import annotations

import numpy as np


def gated_delta_net_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray,
                              beta: np.ndarray, state: np.ndarray, K: int = 1, bcast: int = 0) -> np.ndarray:
    """The gated delta rule in float64; arrays in ggml layout (numpy shape = reversed ne).
    bcast 1: value head h reads q/k head h // (H_v / H_k) instead of h % H_k (interleaved).

    q, k ne [S, H_k, T, n_seqs_qk], v ne [S, H_v, T, n_seqs], g ne [1 or S, H_v, T, n_seqs],
    beta ne [1, H_v, T, n_seqs], state ne [S, S, H_v, n_seqs] (element [j*S + i] is S[i][j]).
    Returns ne [S*H_v, T*n_seqs + K*S*n_seqs]: numpy shape (T*n_seqs + K*S*n_seqs, S*H_v).
    """
    q, k, v, g, beta, state = (np.asarray(x, np.float64) for x in (q, k, v, g, beta, state))
    N, T, H, S = v.shape
    Nqk, _, Hk, _ = q.shape
    if K < 1:
        raise ValueError(f"gated_delta_net_reference: K must be >= 1, got {K}")
    # expand q/k to one (seq, head) per value (seq, head): value head h reads k head h % H_k
    # (bcast 1: h // (H_v / H_k)), value seq n reads q/k seq n // (n_seqs / n_seqs_qk)
    seq_idx = np.arange(N) // (N // Nqk)
    head_idx = np.arange(H) // (H // Hk) if bcast else np.arange(H) % Hk
    qx = q[seq_idx][:, :, head_idx]                      # (N, T, H, S)
    kx = k[seq_idx][:, :, head_idx]
    M = np.swapaxes(state, -1, -2).copy()                # (N, H, i, j) = S[i][j]
    attn = np.empty((N, T, H, S))
    snaps = np.zeros((K, N, H, S, S))                    # slots stored transposed like state
    scale = 1.0 / np.sqrt(S)
    for t in range(T):
        decay = np.exp(g[:, t])                          # (N, H, 1 or S): indexed by key i
        M *= decay[..., :, None]
        kt, qt = kx[:, t], qx[:, t]                      # (N, H, S)
        delta = (v[:, t] - np.einsum("nhij,nhi->nhj", M, kt)) * beta[:, t]
        M += kt[..., :, None] * delta[..., None, :]
        attn[:, t] = np.einsum("nhij,nhi->nhj", M, qt) * scale
        slot = T - 1 - t
        if slot < K:
            snaps[slot] = np.swapaxes(M, -1, -2)
    return np.concatenate([attn.reshape(N * T, H * S), snaps.reshape(K * S * N, H * S)], axis=0)


def split_gdn_output(out: np.ndarray, S: int, H_v: int, T: int, n_seqs: int,
                     K: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a packed output into attn (ne [S, H_v, T, n_seqs]) and states (K slots of ne [S, S, H_v, n_seqs]).

    numpy shapes: attn (n_seqs, T, H_v, S), states (K, n_seqs, H_v, S, S) with states[s, n, h, j, i] = S[i][j].
    """
    flat = np.asarray(out).reshape(-1)
    n_attn = S * H_v * T * n_seqs
    attn = flat[:n_attn].reshape(n_seqs, T, H_v, S)
    states = flat[n_attn:n_attn + K * S * S * H_v * n_seqs].reshape(K, n_seqs, H_v, S, S)
    return attn, states
