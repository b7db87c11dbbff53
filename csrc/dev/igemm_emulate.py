"""CPU emulation of csrc/cuda/conv2d_igemm_tc.cu's fprop, thread by thread: the row table, both tile
loaders (16-byte and element-wise) with the shared-memory swizzle, the stage ring, ldmatrix.x4 and
mma.m16n8k16 fragment layouts as the PTX ISA defines them, and the epilogue's lane -> (row, channel)
map. Compares with torch.nn.functional.conv2d in float64 (only the index math is under test) and
checks that every output element is written exactly once.

    python csrc/dev/igemm_emulate.py [fprop|dgrad|wgrad]   # all by default; needs only torch (CPU)

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


def ldsm(tile, addrs, trans):
    """ldmatrix.x4(.trans): addrs[lane] -> element offset of row lane % 8 of matrix lane // 8."""
    regs = [[None] * 4 for _ in range(32)]
    for mat in range(4):
        for t in range(32):
            if trans:  # thread t gets column t/4, rows 2(t%4) and 2(t%4)+1 of the stored matrix
                a0, a1 = addrs[8 * mat + 2 * (t % 4)], addrs[8 * mat + 2 * (t % 4) + 1]
                regs[t][mat] = (tile[a0 + t // 4], tile[a1 + t // 4])
            else:
                a = addrs[8 * mat + t // 4]
                regs[t][mat] = (tile[a + 2 * (t % 4)], tile[a + 2 * (t % 4) + 1])
    return regs

def swz_t(cols, row, chunk):
    return row * cols + ((chunk ^ (row & 7)) << 3)

def pixel_of(m, P, Q):
    n, pq = divmod(m, P * Q)
    return n, pq // Q, pq % Q

def run_bwd(dirn, N, C, H, W, K, R, S, pad, stride, dil, groups, cfg, vec, splits_target=1):
    """Emulates igemm_kernel<Cfg, T, kDgrad|kWgrad, kVec> (+ wgrad_reduce_kernel) thread by thread."""
    BM, BN, BK, WM, WN, ST = cfg
    WARPS_M, WARPS_N = BM // WM, BN // WN
    T = 32 * WARPS_M * WARPS_N
    Cg, Kg = C // groups, K // groups
    P = (H + 2 * pad - dil * (R - 1) - 1) // stride + 1
    Q = (W + 2 * pad - dil * (S - 1) - 1) // stride + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, H, W, C))
    w = rng.standard_normal((K, R, S, Cg))
    dy = rng.standard_normal((N, P, Q, K))
    xf, wf, dyf = x.reshape(-1), w.reshape(-1), dy.reshape(-1)
    xs_n, xs_h, xs_w = H * W * C, W * C, C
    ws_k, ws_r, ws_s = R * S * Cg, S * Cg, Cg
    ys_n = P * Q * K
    if dirn == "dgrad":
        M, Ng, Kgemm, out_ld, a_tr, b_tr = N * H * W, Cg, R * S * Kg, C, False, True
        out = np.full(N * H * W * C, np.nan)
    else:
        M, Ng, Kgemm, a_tr, b_tr = Kg, R * S * Cg, N * P * Q, True, True
    nk = -(-Kgemm // BK)
    if dirn == "wgrad":  # wgrad_plan with a given slice count: tiles per slice, no empty slice
        tps = -(-nk // splits_target)
        splits = -(-nk // tps)
        partial = np.full((splits, K * Ng), np.nan)
    else:
        tps, splits = 1 << 30, 1

    def dgrad_src(ri, dh, dw_):
        hh, ww = ri[1] - dh, ri[2] - dw_
        if hh < 0 or ww < 0:
            return None
        pp, qq = hh // stride, ww // stride
        if pp * stride == hh and qq * stride == ww and pp < P and qq < Q:
            return pp, qq
        return None

    for bx, by, bz in itertools.product(range(-(-M // BM)), range(-(-Ng // BN)), range(groups * splits)):
        g, split = bz % groups, bz // groups
        m0, n0 = bx * BM, by * BN
        kt0, kt1 = split * tps, min(nk, split * tps + tps)
        rows = []
        if dirn == "dgrad":
            for i in range(BM):
                m = m0 + i
                if m < M:
                    n, hh, ww = pixel_of(m, H, W)
                    rows.append((n * ys_n, hh + pad, ww + pad))
                else:
                    rows.append((0, INVALID, INVALID))
        sa = np.full((ST, BM * BK), np.nan)
        sb = np.full((ST, BN * BK), np.nan)
        dyg, xg, wg = g * Kg, g * Cg, g * Kg * ws_k

        def load(stage, kt):
            written_a, written_b = set(), set()
            for tid in range(T):
                if dirn == "dgrad" and vec:
                    rpp, chunk = T // 4, tid % 4
                    k = kt * BK + chunk * 8
                    k_ok = k < Kgemm
                    r, s_, kk = tap_of(k if k_ok else 0, Kg, S)
                    for i in range(BM // rpp):
                        row = tid // 4 + i * rpp
                        src = dgrad_src(rows[row], r * dil, s_ * dil) if k_ok else None
                        dst = swz(row, chunk)
                        sa[stage, dst:dst + 8] = dyf[dyg + rows[row][0] + (src[0] * Q + src[1]) * K + kk +
                                                     np.arange(8)] if src else 0
                        written_a.update(range(dst, dst + 8))
                    cpr = BN // 8
                    rpp, chunk = T // cpr, tid % cpr
                    c = n0 + chunk * 8
                    for i in range(BK // rpp):
                        row = tid // cpr + i * rpp
                        k = kt * BK + row
                        ok = k < Kgemm and c < Cg
                        r, s_, kk = tap_of(k if ok else 0, Kg, S)
                        dst = swz_t(BN, row, chunk)
                        sb[stage, dst:dst + 8] = wf[wg + kk * ws_k + r * ws_r + s_ * ws_s + c + np.arange(8)] if ok else 0
                        written_b.update(range(dst, dst + 8))
                elif dirn == "dgrad":
                    rpp, kcol = T // BK, tid % BK
                    k = kt * BK + kcol
                    k_ok = k < Kgemm
                    r, s_, kk = tap_of(k if k_ok else 0, Kg, S)
                    sub, chunk = kcol % 8, kcol // 8
                    for i in range(BM // rpp):
                        row = tid // BK + i * rpp
                        src = dgrad_src(rows[row], r * dil, s_ * dil) if k_ok else None
                        dst = swz(row, chunk) + sub
                        sa[stage, dst] = dyf[dyg + rows[row][0] + (src[0] * Q + src[1]) * K + kk] if src else 0
                        written_a.add(dst)
                    rpp, col = T // BN, tid % BN
                    c = n0 + col
                    sub, chunk = col % 8, col // 8
                    for i in range(BK // rpp):
                        row = tid // BN + i * rpp
                        k = kt * BK + row
                        ok = k < Kgemm and c < Cg
                        r, s_, kk = tap_of(k if ok else 0, Kg, S)
                        dst = swz_t(BN, row, chunk) + sub
                        sb[stage, dst] = wf[wg + kk * ws_k + r * ws_r + s_ * ws_s + c] if ok else 0
                        written_b.add(dst)
                elif vec:  # wgrad, 16-byte chunks
                    cpr = BM // 8
                    rpp, chunk = T // cpr, tid % cpr
                    kk = m0 + chunk * 8
                    for i in range(BK // rpp):
                        row = tid // cpr + i * rpp
                        pix = kt * BK + row
                        ok = pix < Kgemm and kk < Kg
                        dst = swz_t(BM, row, chunk)
                        sa[stage, dst:dst + 8] = dyf[dyg + pix * K + kk + np.arange(8)] if ok else 0
                        written_a.update(range(dst, dst + 8))
                    cpr = BN // 8
                    rpp, chunk = T // cpr, tid % cpr
                    j = n0 + chunk * 8
                    j_ok = j < Ng
                    r, s_, c = tap_of(j if j_ok else 0, Cg, S)
                    for i in range(BK // rpp):
                        row = tid // cpr + i * rpp
                        pix = kt * BK + row
                        n, pp, qq = pixel_of(pix, P, Q)
                        hh, ww = pp * stride + r * dil - pad, qq * stride + s_ * dil - pad
                        ok = j_ok and pix < Kgemm and 0 <= hh < H and 0 <= ww < W
                        dst = swz_t(BN, row, chunk)
                        sb[stage, dst:dst + 8] = xf[xg + n * xs_n + hh * xs_h + ww * xs_w + c + np.arange(8)] if ok else 0
                        written_b.update(range(dst, dst + 8))
                else:  # wgrad, element-wise
                    rpp, col = T // BM, tid % BM
                    kk = m0 + col
                    sub, chunk = col % 8, col // 8
                    for i in range(BK // rpp):
                        row = tid // BM + i * rpp
                        pix = kt * BK + row
                        ok = pix < Kgemm and kk < Kg
                        dst = swz_t(BM, row, chunk) + sub
                        sa[stage, dst] = dyf[dyg + pix * K + kk] if ok else 0
                        written_a.add(dst)
                    rpp, col = T // BN, tid % BN
                    j = n0 + col
                    j_ok = j < Ng
                    r, s_, c = tap_of(j if j_ok else 0, Cg, S)
                    sub, chunk = col % 8, col // 8
                    for i in range(BK // rpp):
                        row = tid // BN + i * rpp
                        pix = kt * BK + row
                        n, pp, qq = pixel_of(pix, P, Q)
                        hh, ww = pp * stride + r * dil - pad, qq * stride + s_ * dil - pad
                        ok = j_ok and pix < Kgemm and 0 <= hh < H and 0 <= ww < W
                        dst = swz_t(BN, row, chunk) + sub
                        sb[stage, dst] = xf[xg + n * xs_n + hh * xs_h + ww * xs_w + c] if ok else 0
                        written_b.add(dst)
            # Every element of both tiles is written exactly by this load (no stale stage data).
            assert len(written_a) == BM * BK and len(written_b) == BN * BK

        acc = {wid: np.zeros((WM // 16, WN // 8, 32, 4)) for wid in range(T // 32)}
        ntl = kt1 - kt0
        for st in range(ST - 1):
            if st < ntl:
                load(st, kt0 + st)
        for t in range(ntl):
            nxt = t + ST - 1
            if nxt < ntl:
                load(nxt % ST, kt0 + nxt)
            As, Bs = sa[t % ST], sb[t % ST]
            for wid in range(T // 32):
                wm, wn = wid % WARPS_M, wid // WARPS_M
                for kk in range(BK // 16):
                    af = []
                    for i in range(WM // 16):
                        if a_tr:
                            ad = [swz_t(BM, kk * 16 + ((ln >> 4) << 3) + (ln & 7), (wm * WM + i * 16) // 8 + ((ln >> 3) & 1))
                                  for ln in range(32)]
                        else:
                            ad = [swz(wm * WM + i * 16 + (ln & 15), kk * 2 + (ln >> 4)) for ln in range(32)]
                        af.append(ldsm(As, ad, a_tr))
                    bf = {}
                    for j in range(0, WN // 8, 2):
                        if b_tr:
                            ad = [swz_t(BN, kk * 16 + (((ln >> 3) & 1) << 3) + (ln & 7), (wn * WN + j * 8) // 8 + (ln >> 4))
                                  for ln in range(32)]
                        else:
                            ad = [swz(wn * WN + j * 8 + (ln & 7) + ((ln >> 4) << 3), kk * 2 + ((ln >> 3) & 1))
                                  for ln in range(32)]
                        rg = ldsm(Bs, ad, b_tr)
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
                            assert not np.isnan(D).any(), "read an unwritten shared-memory element"
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
                for e in range(2):
                    if jj + e >= Ng:
                        continue
                    if vec:
                        assert jj + 1 < Ng  # the pair is whole
                    v = acc[wid][i, j, ln, 2 * half + e]
                    if dirn == "wgrad":
                        off = (g * Kg + m) * Ng + jj + e
                        assert np.isnan(partial[split, off]), "written twice"
                        partial[split, off] = v
                    else:
                        off = m * out_ld + g * Ng + jj + e
                        assert np.isnan(out[off]), "written twice"
                        out[off] = v
    tx = torch.from_numpy(x).permute(0, 3, 1, 2)
    tw = torch.from_numpy(w).permute(0, 3, 1, 2)
    tdy = torch.from_numpy(dy).permute(0, 3, 1, 2)
    if dirn == "dgrad":
        ref = torch.nn.grad.conv2d_input(tx.shape, tw, tdy, stride, pad, dil, groups).permute(0, 2, 3, 1).numpy()
        got = out.reshape(ref.shape)
    else:
        ref = torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, stride, pad, dil, groups).permute(0, 2, 3, 1).numpy()
        red = np.zeros(K * Ng)
        for sp in range(splits):  # wgrad_reduce_kernel: fixed split order
            red = red + partial[sp]
        got = red.reshape(ref.shape)
    assert not np.isnan(got).any(), "an output element was never written"
    return np.abs(got - ref).max(), splits

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
for cs in cases if len(sys.argv) < 2 or sys.argv[1] == "fprop" else []:
    *shape, cfg, vec = cs
    K = shape[4]
    rng = np.random.default_rng(1)
    P = (shape[2] + 2 * shape[7] - shape[9] * (shape[5] - 1) - 1) // shape[8] + 1
    Q = (shape[3] + 2 * shape[7] - shape[9] * (shape[6] - 1) - 1) // shape[8] + 1
    res = rng.standard_normal((shape[0], P, Q, K))
    err = run(*shape, cfg, vec, scale=rng.random(K) + 0.5, bias=rng.standard_normal(K), res=res, relu=True)
    print(cs[:11], "large" if cfg == LARGE else "small", "vec" if vec else "elem", "max err %.2e" % err, flush=True)
    assert err < 1e-9

bwd_cases = [  # dir, N, C, H, W, K, R, S, pad, stride, dil, groups, cfg, vec, wgrad slices
    ("dgrad", 2, 16, 5, 6, 24, 3, 3, 1, 1, 1, 1, SMALL, True, 1),     # stride 1, M tail
    ("dgrad", 1, 12, 7, 6, 10, 3, 3, 1, 2, 1, 1, SMALL, False, 1),    # stride 2, C % 8 != 0
    ("dgrad", 1, 16, 9, 8, 16, 3, 3, 2, 2, 2, 2, SMALL, True, 1),     # stride 2, dilation 2, groups
    ("dgrad", 1, 3, 11, 10, 8, 5, 3, 2, 2, 1, 1, SMALL, False, 1),    # stem-like C = 3, 5x3
    ("dgrad", 1, 136, 12, 11, 8, 1, 1, 0, 1, 1, 1, LARGE, True, 1),   # large tile, N tail (136)
    ("dgrad", 1, 130, 12, 11, 9, 1, 1, 0, 2, 1, 1, LARGE, False, 1),  # large tile, element-wise, 1x1/2
    ("wgrad", 2, 16, 7, 6, 24, 3, 3, 1, 1, 1, 1, SMALL, True, 3),     # three k slices
    ("wgrad", 6, 12, 7, 6, 10, 3, 3, 1, 2, 1, 1, SMALL, False, 2),    # stride 2, C % 8 != 0
    ("wgrad", 4, 16, 9, 8, 16, 3, 3, 2, 2, 2, 2, SMALL, True, 2),     # dilation, groups
    ("wgrad", 1, 3, 9, 9, 10, 3, 3, 1, 1, 1, 1, SMALL, False, 1),     # C = 3, K tail
    ("wgrad", 3, 16, 5, 5, 136, 3, 3, 1, 1, 1, 1, LARGE, True, 2),    # large tile, M tail
    ("wgrad", 1, 15, 6, 5, 130, 3, 3, 1, 1, 1, 1, LARGE, False, 1),   # large tile, element-wise
]
for cs in bwd_cases if len(sys.argv) < 2 or sys.argv[1] != "fprop" else []:
    dirn, *shape, cfg, vec, sl = cs
    if len(sys.argv) > 1 and sys.argv[1] not in ("all", dirn):
        continue
    err, splits = run_bwd(dirn, *shape, cfg, vec, sl)
    print(cs[:12], "large" if cfg == LARGE else "small", "vec" if vec else "elem", "slices", splits,
          "max err %.2e" % err, flush=True)
    assert err < 1e-9
print("emulation OK")
