"""CPU emulation of csrc/cuda/conv2d_igemm_tc.cu's fprop, thread by thread: the row table, both tile
loaders (16-byte and element-wise) with the shared-memory swizzle, the stage ring, ldmatrix.x4 and
mma.m16n8k16 fragment layouts as the PTX ISA defines them, and the epilogue's lane -> (row, channel)
map. Compares with torch.nn.functional.conv2d in float64 (only the index math is under test) and
checks that every output element is written exactly once.

    python csrc/dev/igemm_emulate.py        # ~5 s, needs only torch (CPU)

It mirrors the kernel's index expressions by hand: change it together with the kernel. It is the
evidence that the kernel's data movement was right before it ever ran on a GPU, not a replacement
for csrc/dev/igemm_harness.cu.
"""
# The per-block helpers (load, ldmatrix_x4) run only inside the iteration that defines them.
# ruff: noqa: B023
import itertools
import sys

import numpy as np
import torch
import torch.nn.functional as F

INVALID = -(1 << 30)

def swz(row, chunk):
    return row * 32 + ((chunk ^ ((row >> 1) & 3)) << 3)

def tap_of(k, Cg, S):
    rs = k // Cg
    r = rs // S
    return r, rs - r * S, k - rs * Cg

def run(N, C, H, W, K, R, S, pad, stride, dil, groups, cfg, vec, scale=None, bias=None, res=None, relu=False):
    BM, BN, BK, WM, WN, ST = cfg
    WARPS_M, WARPS_N = BM // WM, BN // WN
    T = 32 * WARPS_M * WARPS_N
    Cg, Kg = C // groups, K // groups
    P = (H + 2 * pad - dil * (R - 1) - 1) // stride + 1
    Q = (W + 2 * pad - dil * (S - 1) - 1) // stride + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, H, W, C))
    w = rng.standard_normal((K, R, S, Cg))
    xf, wf = x.reshape(-1), w.reshape(-1)
    xs_n, xs_h, xs_w = H * W * C, W * C, C
    ws_k, ws_r, ws_s = R * S * Cg, S * Cg, Cg
    M, Kgemm = N * P * Q, R * S * Cg
    y = np.full(N * P * Q * K, np.nan)
    resf = res.reshape(-1) if res is not None else None
    for bx, by, g in itertools.product(range(-(-M // BM)), range(-(-Kg // BN)), range(groups)):
        m0, n0 = bx * BM, by * BN
        xg_off, wg_off = g * Cg, g * Kg * ws_k
        rows = []
        for i in range(BM):
            m = m0 + i
            if m < M:
                n, pq = divmod(m, P * Q)
                pp, qq = divmod(pq, Q)
                rows.append((n * xs_n, pp * stride - pad, qq * stride - pad))
            else:
                rows.append((0, INVALID, INVALID))
        sa = np.full((ST, BM * BK), np.nan)
        sb = np.full((ST, BN * BK), np.nan)
        def load(stage, kt):
            for tid in range(T):
                if vec:
                    rpp = T // 4
                    chunk = tid % 4
                    k = kt * BK + chunk * 8
                    k_ok = k < Kgemm
                    r, s, c = tap_of(k if k_ok else 0, Cg, S)
                    for i in range(BM // rpp):
                        row = tid // 4 + i * rpp
                        base, h0, w0 = rows[row]
                        h, ww = h0 + r * dil, w0 + s * dil
                        ok = k_ok and 0 <= h < H and 0 <= ww < W
                        dst = swz(row, chunk)
                        sa[stage, dst:dst + 8] = xf[xg_off + base + h * xs_h + ww * xs_w + c + np.arange(8)] if ok else 0
                    for i in range(BN // rpp):
                        row = tid // 4 + i * rpp
                        j = n0 + row
                        ok = k_ok and j < Kg
                        dst = swz(row, chunk)
                        sb[stage, dst:dst + 8] = wf[wg_off + j * ws_k + r * ws_r + s * ws_s + c + np.arange(8)] if ok else 0
                else:
                    rpp = T // BK
                    kcol = tid % BK
                    k = kt * BK + kcol
                    k_ok = k < Kgemm
                    r, s, c = tap_of(k if k_ok else 0, Cg, S)
                    sub, chunk = kcol % 8, kcol // 8
                    for i in range(BM // rpp):
                        row = tid // BK + i * rpp
                        base, h0, w0 = rows[row]
                        h, ww = h0 + r * dil, w0 + s * dil
                        ok = k_ok and 0 <= h < H and 0 <= ww < W
                        sa[stage, swz(row, chunk) + sub] = xf[xg_off + base + h * xs_h + ww * xs_w + c] if ok else 0
                    for i in range(BN // rpp):
                        row = tid // BK + i * rpp
                        j = n0 + row
                        ok = k_ok and j < Kg
                        sb[stage, swz(row, chunk) + sub] = wf[wg_off + j * ws_k + r * ws_r + s * ws_s + c] if ok else 0
        def ldmatrix_x4(tile, addrs):  # addrs[lane] -> element offset, returns regs[lane][4] = (lo, hi)
            regs = [[None] * 4 for _ in range(32)]
            for mat in range(4):
                for t in range(32):
                    a = addrs[8 * mat + t // 4]
                    regs[t][mat] = (tile[a + 2 * (t % 4)], tile[a + 2 * (t % 4) + 1])
            return regs
        acc = {wid: np.zeros((WM // 16, WN // 8, 32, 4)) for wid in range(T // 32)}
        nk = -(-Kgemm // BK)
        for st in range(ST - 1):
            if st < nk:
                load(st, st)
        for kt in range(nk):
            nxt = kt + ST - 1
            if nxt < nk:
                load(nxt % ST, nxt)
            assert nxt % ST != kt % ST
            As, Bs = sa[kt % ST], sb[kt % ST]
            for wid in range(T // 32):
                wm, wn = wid % WARPS_M, wid // WARPS_M
                for kk in range(BK // 16):
                    af = [ldmatrix_x4(As, [swz(wm * WM + i * 16 + (ln & 15), kk * 2 + (ln >> 4)) for ln in range(32)])
                          for i in range(WM // 16)]
                    bf = {}
                    for j in range(0, WN // 8, 2):
                        rg = ldmatrix_x4(Bs, [swz(wn * WN + j * 8 + (ln & 7) + ((ln >> 4) << 3), kk * 2 + ((ln >> 3) & 1))
                                              for ln in range(32)])
                        bf[j] = [(rg[ln][0], rg[ln][1]) for ln in range(32)]
                        bf[j + 1] = [(rg[ln][2], rg[ln][3]) for ln in range(32)]
                    for i in range(WM // 16):
                        A = np.zeros((16, 16))
                        for ln in range(32):
                            gid, tig = ln // 4, ln % 4
                            for reg, (ro, co) in enumerate([(0, 0), (8, 0), (0, 8), (8, 8)]):
                                A[gid + ro, 2 * tig + co:2 * tig + co + 2] = af[i][ln][reg]
                        for j in range(WN // 8):
                            B = np.zeros((16, 8))
                            for ln in range(32):
                                gid, tig = ln // 4, ln % 4
                                B[2 * tig:2 * tig + 2, gid] = bf[j][ln][0]
                                B[2 * tig + 8:2 * tig + 10, gid] = bf[j][ln][1]
                            D = A @ B
                            for ln in range(32):
                                gid, tig = ln // 4, ln % 4
                                acc[wid][i, j, ln] += [D[gid, 2 * tig], D[gid, 2 * tig + 1], D[gid + 8, 2 * tig],
                                                      D[gid + 8, 2 * tig + 1]]
        for wid in range(T // 32):
            wm, wn = wid % WARPS_M, wid // WARPS_M
            for i, half, j, ln in itertools.product(range(WM // 16), range(2), range(WN // 8), range(32)):
                m = m0 + wm * WM + i * 16 + (ln >> 2) + half * 8
                if m >= M:
                    continue
                jj = n0 + wn * WN + j * 8 + (ln & 3) * 2
                ch = g * Kg + jj
                off = m * K + ch
                for e in range(2):
                    if jj + e < Kg:
                        v = acc[wid][i, j, ln, 2 * half + e]
                        if scale is not None:
                            v *= scale[ch + e]
                        if bias is not None:
                            v += bias[ch + e]
                        if resf is not None:
                            v += resf[off + e]
                        if relu and v < 0:
                            v = 0
                        if vec:
                            assert jj + 1 < Kg  # the pair is whole
                        assert np.isnan(y[off + e]), "written twice"
                        y[off + e] = v
    ref = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w).permute(0, 3, 1, 2), None, stride, pad,
                   dil, groups).permute(0, 2, 3, 1).numpy()
    if scale is not None:
        ref = ref * scale
    if bias is not None:
        ref = ref + bias
    if res is not None:
        ref = ref + res
    if relu:
        ref = np.maximum(ref, 0)
    return np.abs(y.reshape(ref.shape) - ref).max()

SMALL, LARGE = (64, 64, 32, 32, 32, 3), (128, 128, 32, 64, 64, 3)
cases = [  # N, C, H, W, K, R, S, pad, stride, dil, groups, cfg, vec
    (1, 3, 9, 8, 10, 3, 3, 1, 2, 1, 1, SMALL, False),
    (2, 16, 5, 6, 24, 3, 3, 1, 1, 1, 1, SMALL, True),
    (1, 12, 5, 7, 10, 3, 3, 1, 1, 1, 1, SMALL, False),
    (1, 16, 6, 5, 16, 3, 3, 2, 1, 2, 2, SMALL, True),
    (1, 9, 5, 5, 6, 3, 2, 1, 1, 1, 3, SMALL, False),
    (1, 8, 12, 13, 136, 1, 1, 0, 1, 1, 1, LARGE, True),
    (1, 40, 6, 5, 72, 2, 2, 0, 2, 1, 1, SMALL, True),
    (1, 5, 12, 12, 130, 1, 1, 0, 1, 1, 1, LARGE, False),
]
for cs in cases[int(sys.argv[1]) if len(sys.argv) > 1 else 0:]:
    *shape, cfg, vec = cs
    K = shape[4]
    rng = np.random.default_rng(1)
    P = (shape[2] + 2 * shape[7] - shape[9] * (shape[5] - 1) - 1) // shape[8] + 1
    Q = (shape[3] + 2 * shape[7] - shape[9] * (shape[6] - 1) - 1) // shape[8] + 1
    res = rng.standard_normal((shape[0], P, Q, K))
    err = run(*shape, cfg, vec, scale=rng.random(K) + 0.5, bias=rng.standard_normal(K), res=res, relu=True)
    print(cs[:11], "large" if cfg == LARGE else "small", "vec" if vec else "elem", "max err %.2e" % err, flush=True)
    assert err < 1e-9
print("emulation OK")
