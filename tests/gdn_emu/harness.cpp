// Runs the tensor-core GATED_DELTA_NET kernels (backends/cuda/gdn_tc_*.cu) on the host emulation of
// emu.h and compares them with a float64 recurrence (ops/gdn_reference.py's semantics).
//   harness chunked S Hk Hv T N Nqk g_lo seed       (prep, state + output; K = 1; KDA when built with
//                                                    -DGDN_KDA=1)
//   harness decode  S Hk Hv N Nqk kda K g_lo seed   (T = 1)
// Prints "out <err> state <err> unwritten <n>" (err: max |got - ref| / max |ref|); exit 1 on NaN.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>
#define GDN_EMULATE
#include "gdn_tc.cuh"
#include "gdn_tc_prep.cu"
#include "gdn_tc_state.cu"
#ifndef DP
#define DP 2
#endif
#define KDA kda_flag
static bool kda_flag = false;
// GDN_EMU_INTERLEAVED=1 in the environment: value head h reads q/k head h / (H_v / H_k) (the op's
// bcast 1) instead of h % H_k, in the kernels and the reference alike
static bool interleaved() { const char* e = getenv("GDN_EMU_INTERLEAVED"); return e && atoi(e) != 0; }
// GDN_EMU_INPLACE=1: the final state goes over the input state (a state destination that is the
// slot the state was read from, ops/gated_delta_net.attach_state_dst), not into dst's snapshot slot
static bool inplace() { const char* e = getenv("GDN_EMU_INPLACE"); return e && atoi(e) != 0; }
#include "gdn_tc_decode.cu"

using vec = std::vector<float>;

struct Inputs { vec q, k, v, g, beta, state; };

static Inputs make(int S, int Hk, int Hv, int T, int N, int Nqk, bool kda, float g_lo, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::uniform_real_distribution<float> ug(g_lo, -1e-3f), ub(0.1f, 1.f);
    Inputs in;
    auto unit = [&](vec& a, size_t rows) {
        a.resize(rows * S);
        for (size_t r = 0; r < rows; ++r) {
            double n = 0;
            for (int i = 0; i < S; ++i) { a[r * S + i] = nd(rng); n += a[r * S + i] * a[r * S + i]; }
            for (int i = 0; i < S; ++i) a[r * S + i] /= (float)std::sqrt(n);
        }
    };
    unit(in.q, (size_t)Nqk * T * Hk);
    unit(in.k, (size_t)Nqk * T * Hk);
    in.v.resize((size_t)N * T * Hv * S);
    for (auto& x : in.v) x = nd(rng);
    in.g.resize((size_t)N * T * Hv * (kda ? S : 1));
    for (auto& x : in.g) x = ug(rng);
    in.beta.resize((size_t)N * T * Hv);
    for (auto& x : in.beta) x = ub(rng);
    in.state.resize((size_t)N * Hv * S * S);
    for (auto& x : in.state) x = 0.1f * nd(rng);
    return in;
}

// float64 reference: out [N][T][Hv][S], final state [N][Hv][j][i]
static void reference(const Inputs& in, int S, int Hk, int Hv, int T, int N, int Nqk, bool kda,
                      std::vector<double>& out, std::vector<double>& fin) {
    out.assign((size_t)N * T * Hv * S, 0);
    fin.assign((size_t)N * Hv * S * S, 0);
    const double sc = 1.0 / std::sqrt((double)S);
    std::vector<double> M((size_t)S * S), kv(S), dl(S);
    for (int n = 0; n < N; ++n)
        for (int h = 0; h < Hv; ++h) {
            const int sq = n / (N / Nqk), hk = interleaved() ? h / (Hv / Hk) : h % Hk;
            for (int j = 0; j < S; ++j)
                for (int i = 0; i < S; ++i) M[(size_t)i * S + j] = in.state[(((size_t)n * Hv + h) * S + j) * S + i];
            for (int t = 0; t < T; ++t) {
                const float* kt = &in.k[(((size_t)sq * T + t) * Hk + hk) * S];
                const float* qt = &in.q[(((size_t)sq * T + t) * Hk + hk) * S];
                const float* vt = &in.v[(((size_t)n * T + t) * Hv + h) * S];
                const size_t gi = ((size_t)n * T + t) * Hv + h;
                for (int i = 0; i < S; ++i) {
                    double d = std::exp((double)(kda ? in.g[gi * S + i] : in.g[gi]));
                    for (int j = 0; j < S; ++j) M[(size_t)i * S + j] *= d;
                }
                for (int j = 0; j < S; ++j) {
                    double a = 0;
                    for (int i = 0; i < S; ++i) a += M[(size_t)i * S + j] * kt[i];
                    dl[j] = (vt[j] - a) * in.beta[gi];
                }
                for (int i = 0; i < S; ++i)
                    for (int j = 0; j < S; ++j) M[(size_t)i * S + j] += kt[i] * dl[j];
                for (int j = 0; j < S; ++j) {
                    double a = 0;
                    for (int i = 0; i < S; ++i) a += M[(size_t)i * S + j] * qt[i];
                    out[gi * S + j] = a * sc;
                }
            }
            for (int j = 0; j < S; ++j)
                for (int i = 0; i < S; ++i) fin[(((size_t)n * Hv + h) * S + j) * S + i] = M[(size_t)i * S + j];
        }
}

static double rel(const float* got, const std::vector<double>& ref, size_t n, int& nan) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(got[i])) { ++nan; continue; }
        e = std::max(e, std::fabs(got[i] - ref[i]));
        m = std::max(m, std::fabs(ref[i]));
    }
    return e / m;
}

int main(int argc, char** argv) {
    std::string mode = argv[1];
    if (mode == "chunked") {
        int S = atoi(argv[2]), Hk = atoi(argv[3]), Hv = atoi(argv[4]), T = atoi(argv[5]), N = atoi(argv[6]),
            Nqk = atoi(argv[7]);
        float g_lo = atof(argv[8]);
        unsigned seed = atoi(argv[9]);
        const bool kda = GDN_KDA;
        Inputs in = make(S, Hk, Hv, T, N, Nqk, kda, g_lo, seed);
        const int nc = (T + L - 1) / L, Tp = nc * L, hs = Hv * N;
        vec U((size_t)hs * Tp * S, NAN), W((size_t)hs * nc * L * S, NAN), P((size_t)hs * nc * L * L, NAN),
            G(kda ? (size_t)hs * nc * S : (size_t)2 * hs * Tp, NAN),
            KG(kda ? (size_t)hs * Tp * S : 1, NAN), QG(kda ? (size_t)hs * Tp * S : 1, NAN);
        vec dst((size_t)S * Hv * (T * N + S * N), NAN);
        const int rep = N / Nqk;
        std::vector<double> ro, rf;
        reference(in, S, Hk, Hv, T, N, Nqk, kda, ro, rf);   // before the kernels: in place, they overwrite the state
        emu_launch({(unsigned)nc, (unsigned)Hv, (unsigned)N}, PREP_THREADS, PREP_SMEM_FLOATS * 4, [&] {
            gdn_tc_prep(in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(), U.data(), W.data(),
                        P.data(), G.data(), KG.data(), QG.data(), S, Hv, T, Hk, rep, interleaved() ? Hv / Hk : 1);
        });
        float* dstate = inplace() ? in.state.data() : dst.data() + (size_t)S * Hv * T * N;
        emu_launch({(unsigned)((S + BV - 1) / BV), (unsigned)Hv, (unsigned)N}, STATE_THREADS, STATE_SMEM_FLOATS * 4,
                   [&] {
                       gdn_tc_state(kda ? KG.data() : in.k.data(), kda ? QG.data() : in.q.data(), in.state.data(),
                                    dstate, dst.data(), U.data(), W.data(), P.data(), G.data(), S, Hv, T, Hk, rep,
                                    interleaved() ? Hv / Hk : 1);
                   });
        int nan = 0;
        double eo = rel(dst.data(), ro, ro.size(), nan), es = rel(dstate, rf, rf.size(), nan);
        printf("out %.3e state %.3e unwritten %d\n", eo, es, nan);
        return nan ? 1 : 0;
    }
    int S = atoi(argv[2]), Hk = atoi(argv[3]), Hv = atoi(argv[4]), N = atoi(argv[5]), Nqk = atoi(argv[6]);
    kda_flag = atoi(argv[7]) != 0;
    int K = atoi(argv[8]);
    float g_lo = atof(argv[9]);
    unsigned seed = atoi(argv[10]);
    Inputs in = make(S, Hk, Hv, 1, N, Nqk, kda_flag, g_lo, seed);
    vec dst((size_t)S * Hv * (N + K * S * N), NAN);
    std::vector<double> ro, rf;
    reference(in, S, Hk, Hv, 1, N, Nqk, kda_flag, ro, rf);
    if (inplace() && K != 1) return 2;
    float* out_state = inplace() ? in.state.data() : dst.data() + (size_t)S * Hv * N;
    emu_launch({3, 1, 1}, 64, 16, [&] {
        gdn_tc_decode(in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.beta.data(), in.state.data(),
                      dst.data(), out_state, S, Hv, N, Hk, N / Nqk, K, interleaved() ? Hv / Hk : 1);
    });
    int nan = 0;
    double eo = rel(dst.data(), ro, ro.size(), nan), es = rel(out_state, rf, rf.size(), nan);
    for (size_t i = ro.size() + rf.size(); i < dst.size(); ++i)
        if (dst[i] != 0.f) ++nan;
    printf("out %.3e state %.3e unwritten %d\n", eo, es, nan);
    return nan ? 1 : 0;
}
