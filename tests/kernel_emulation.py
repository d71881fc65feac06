"""The CUDA kernels' arithmetic, operation for operation, in numpy (cxr_edge/cuda/saliency.cu).

Not an oracle of the math (that is tests/reference_math.py and ``separable_reference`` here, in
float64): this reproduces the kernels' float32 summation order so that CPU-only tests can show
how large the kernels' rounding error is (biased logits, S = 64) and GPU tests can compare the
kernels with it bit for bit. Every float32 operation here is one the kernel performs with an
explicit round-to-nearest intrinsic, in the same order; numpy float32 arithmetic rounds each
operation to nearest as well. Only ``sigmoidf_precise`` (``expf``) may differ by an ulp.

Shapes: N image size, P patch size, G = N // P, S steps, K = S*S shifts, C classes.
"""

from __future__ import annotations

import numpy as np

from cxr_edge.tile import shift_offsets

F32 = np.float32
#: float32 carries 24 bits: a few ulps of the largest map value, relative.
REL_TOL = 2e-6


def structured_logits(
    steps: int, offset: float, classes: int, seed: int, image_size: int = 512, patch_size: int = 64
) -> np.ndarray:
    """``(S*S*G*G, C) float32`` logits like a model's: offset + a smooth field of the patch's
    position in the image (so shifted copies agree where they overlap) + noise."""
    grid = image_size // patch_size
    rng = np.random.default_rng(seed)
    off = shift_offsets(steps, patch_size)
    centre = (np.arange(grid)[None, :] * patch_size + off[:, None] + patch_size / 2) / image_size  # (S, G)
    y = centre[:, None, :, None]
    x = centre[None, :, None, :]
    out = np.empty((steps, steps, grid, grid, classes))
    for c in range(classes):
        amplitude, phase = rng.uniform(1.0, 4.0), rng.uniform(0.0, 6.0)
        out[..., c] = offset + amplitude * np.sin(5 * y + phase) * np.cos(4 * x)
    out += 0.5 * rng.standard_normal(out.shape)
    return out.reshape(-1, classes).astype(np.float32)


#: saliency.cu's kColumnSegment and kRowSegment: running sums restart this often.
COLUMN_SEGMENT = 16
ROW_SEGMENT = 64


def sigmoid32(x: np.ndarray) -> np.ndarray:
    """sigmoidf_precise in float32: e = exp(-|x|); x >= 0 ? 1/(1+e) : e/(1+e)."""
    x = np.asarray(x, dtype=F32)
    e = np.exp(-np.abs(x)).astype(F32)
    one = F32(1.0)
    out: np.ndarray = np.where(x >= 0, one / (one + e), e / (one + e)).astype(F32)
    return out


def _cell_step(r: np.ndarray | int, off: np.ndarray | int, p: int) -> np.ndarray:
    d = np.asarray(r) - np.asarray(off)
    return np.where(d < 0, -1, np.where(d >= p, 1, 0))


def _residues(offsets: np.ndarray, p: int) -> np.ndarray:
    res = np.full(p, -1, dtype=np.int64)
    for k, o in enumerate(offsets):
        res[(int(o) + p) % p] = k
    return res


def shift_logits_pass(logits: np.ndarray, grid: int) -> np.ndarray:
    """Pass 1: ``(K*G*G, C)`` -> ``(K, C) float32``, a sequential float32 sum over the G*G
    patches of each shift, then one division."""
    per_shift = grid * grid
    rows = np.asarray(logits).astype(F32).reshape(-1, per_shift, logits.shape[1])
    total = np.zeros((rows.shape[0], rows.shape[2]), dtype=F32)
    for q in range(per_shift):
        total = total + rows[:, q, :]
    out: np.ndarray = (total / F32(per_shift)).astype(F32)
    return out


def baseline_pass(shift_logits: np.ndarray) -> np.ndarray:
    """Pass 1b: ``(K, C)`` -> ``(C,) float32``, the mean shift logit by a sequential sum over k."""
    total = np.zeros(shift_logits.shape[1], dtype=F32)
    for k in range(shift_logits.shape[0]):
        total = total + shift_logits[k]
    out: np.ndarray = (total / F32(shift_logits.shape[0])).astype(F32)
    return out


def emulate_postprocess(
    logits: np.ndarray, steps: int, image_size: int, patch_size: int, centre: bool = True
) -> dict[str, np.ndarray]:
    """The three postprocess passes in float32: ``logits (K*G*G, C)`` (float32 or float16
    values) -> ``shift_logits (K, C)``, ``logits (C,)``, ``raw``, ``scaled`` ``(C, N, N) float32``.

    centre=False replaces the baseline b (the mean shift logit) by 0, to show what centring
    buys; the kernel always centres.
    """
    n, p, s = image_size, patch_size, steps
    g = n // p
    classes = logits.shape[1]
    off = shift_offsets(s, p)
    res = _residues(off, p)
    zero = int(np.flatnonzero(off == 0)[0])
    k_zero = zero * s + zero

    shift = shift_logits_pass(logits, g)  # (K, C)
    base = baseline_pass(shift) if centre else np.zeros(classes, dtype=F32)  # (C,)
    # d[i, j, row, col, c] = L - b
    d = (np.asarray(logits).astype(F32).reshape(s, s, g, g, classes) - base).astype(F32)
    w = sigmoid32(shift).reshape(s, s, classes)  # w[i, j, c]

    # ---- pass 2: column pass; accumulators (seg, i, row, c) over x segments
    seg_starts = np.arange(0, n, COLUMN_SEGMENT)
    nseg = len(seg_starts)
    t_raw = np.zeros((classes, s, g, n), dtype=F32)
    t_scaled = np.zeros_like(t_raw)
    w_cover = np.zeros((classes, s, n), dtype=F32)
    q = seg_starts // p
    r = seg_starts % p
    acc_raw = np.zeros((nseg, s, g, classes), dtype=F32)
    acc_scaled = np.zeros_like(acc_raw)
    acc_cover = np.zeros((nseg, s, classes), dtype=F32)
    zero32 = F32(0.0)
    for j in range(s):
        col = q + _cell_step(r, off[j], p)
        valid = (col >= 0) & (col < g)
        v = d[:, j][:, :, np.clip(col, 0, g - 1), :].transpose(2, 0, 1, 3)  # (seg, i, row, c)
        v = np.where(valid[:, None, None, None], v, zero32)
        wj = np.where(valid[:, None, None], w[None, :, j, :], zero32)  # (seg, i, c)
        acc_raw = acc_raw + v
        acc_scaled = acc_scaled + (v * wj[:, :, None, :]).astype(F32)
        acc_cover = acc_cover + wj
    for t in range(COLUMN_SEGMENT):
        x = seg_starts + t
        inside = x < n
        if t > 0:
            r = r + 1
            wrap = r == p
            r = np.where(wrap, 0, r)
            q = np.where(wrap, q + 1, q)
            j = res[r]
            has = (j >= 0) & inside
            jj = np.where(has, j, 0)
            col = q + (off[jj] < 0).astype(np.int64)
            now_ok = has & (col < g)
            before_ok = has & (col >= 1)
            # d[i, jj[seg], row, col[seg], c]: advanced indices split by a slice come first,
            # so this is already (seg, i, row, c)
            now = d[:, jj, :, np.clip(col, 0, g - 1), :]
            before = d[:, jj, :, np.clip(col - 1, 0, g - 1), :]
            now = np.where(now_ok[:, None, None, None], now, zero32)
            before = np.where(before_ok[:, None, None, None], before, zero32)
            wj = np.where(has[:, None, None], w[:, jj, :].transpose(1, 0, 2), zero32)  # (seg, i, c)
            step = (now - before).astype(F32)
            acc_raw = np.where(has[:, None, None, None], acc_raw + step, acc_raw)
            acc_scaled = np.where(
                has[:, None, None, None], acc_scaled + (step * wj[:, :, None, :]).astype(F32), acc_scaled
            )
            starts = (has & (col == 0))[:, None, None]
            ends = (has & (col == g))[:, None, None]
            acc_cover = np.where(starts, acc_cover + wj, np.where(ends, acc_cover - wj, acc_cover))
        xs = x[inside]
        t_raw[:, :, :, xs] = acc_raw[inside].transpose(3, 1, 2, 0)
        t_scaled[:, :, :, xs] = acc_scaled[inside].transpose(3, 1, 2, 0)
        w_cover[:, :, xs] = acc_cover[inside].transpose(2, 1, 0)

    # ---- pass 3: row pass; accumulators (c, yseg, x)
    xs = np.arange(n)
    cover_cols = np.zeros(n, dtype=np.int64)
    for j in range(s):
        cover_cols += ((xs - off[j] >= 0) & (xs - off[j] < n)).astype(np.int64)
    y_starts = np.arange(0, n, ROW_SEGMENT)
    ny = len(y_starts)
    yq, yr = y_starts // p, y_starts % p
    acc_r = np.zeros((classes, ny, n), dtype=F32)
    acc_s = np.zeros_like(acc_r)
    acc_c = np.zeros_like(acc_r)
    cover_rows = np.zeros(ny, dtype=np.int64)
    for i in range(s):
        row = yq + _cell_step(yr, off[i], p)
        valid = (row >= 0) & (row < g)
        cover_rows += valid
        tr = t_raw[:, i][:, np.clip(row, 0, g - 1), :]  # (c, yseg, x)
        ts = t_scaled[:, i][:, np.clip(row, 0, g - 1), :]
        wc = np.broadcast_to(w_cover[:, i][:, None, :], acc_c.shape)
        m = valid[None, :, None]
        acc_r = acc_r + np.where(m, tr, zero32)
        acc_s = acc_s + np.where(m, ts, zero32)
        acc_c = acc_c + np.where(m, wc, zero32)
    count = F32(s * s)
    raw = np.zeros((classes, n, n), dtype=F32)
    scaled = np.zeros_like(raw)
    b = base[:, None, None]
    for t in range(ROW_SEGMENT):
        y = y_starts + t
        inside = y < n
        if t > 0:
            yr = yr + 1
            wrap = yr == p
            yr = np.where(wrap, 0, yr)
            yq = np.where(wrap, yq + 1, yq)
            i_ = res[yr]
            has = (i_ >= 0) & inside
            ii = np.where(has, i_, 0)
            row = yq + (off[ii] < 0).astype(np.int64)
            now_ok = (has & (row < g))[None, :, None]
            before_ok = (has & (row >= 1))[None, :, None]
            rc, rb = np.clip(row, 0, g - 1), np.clip(row - 1, 0, g - 1)
            tr_now = t_raw[:, ii, rc, :]  # (c, yseg, x)
            tr_before = t_raw[:, ii, rb, :]
            ts_now = t_scaled[:, ii, rc, :]
            ts_before = t_scaled[:, ii, rb, :]
            h = has[None, :, None]
            step_r = (np.where(now_ok, tr_now, zero32) - np.where(before_ok, tr_before, zero32)).astype(F32)
            step_s = (np.where(now_ok, ts_now, zero32) - np.where(before_ok, ts_before, zero32)).astype(F32)
            acc_r = np.where(h, acc_r + step_r, acc_r)
            acc_s = np.where(h, acc_s + step_s, acc_s)
            wc = w_cover[:, ii, :]  # (c, yseg, x)
            starts, ends = has & (row == 0), has & (row == g)
            acc_c = np.where(
                starts[None, :, None], acc_c + wc, np.where(ends[None, :, None], acc_c - wc, acc_c)
            )
            cover_rows = cover_rows + starts.astype(np.int64) - ends.astype(np.int64)
        cover = (cover_rows[:, None] * cover_cols[None, :]).astype(F32)  # (yseg, x), exact
        raw_t = ((acc_r + (b * cover[None]).astype(F32)).astype(F32) / count).astype(F32)
        scaled_t = ((acc_s + (b * acc_c).astype(F32)).astype(F32) / count).astype(F32)
        raw[:, y[inside], :] = raw_t[:, inside, :]
        scaled[:, y[inside], :] = scaled_t[:, inside, :]
    return {"shift_logits": shift, "logits": shift[k_zero], "raw": raw, "scaled": scaled}


def separable_reference(
    logits: np.ndarray, steps: int, image_size: int, patch_size: int
) -> dict[str, np.ndarray]:
    """The maps of docs/model.md in float64 by direct sums, using only that the 2-D shift is separable:
    map[y, x] = (1/K) sum_i sum_j [y, x inside shift (i, j)] L_ij[row_i(y), col_j(x)] (times
    sigmoid(mean L_ij) for ``scaled``). Independent of the kernels' differences and of
    cxr_edge.postprocess; fast enough for S = 64 (O(S*S*G*N + S*N*N) per class)."""
    n, p, s = image_size, patch_size, steps
    g = n // p
    classes = logits.shape[1]
    off = shift_offsets(s, p)
    lg = np.asarray(logits, dtype=np.float64).reshape(s, s, g, g, classes)
    means = lg.mean(axis=(2, 3))  # (i, j, c)
    weight = 1.0 / (1.0 + np.exp(-means))
    coord = np.arange(n)
    raw = np.zeros((classes, n, n))
    scaled = np.zeros((classes, n, n))
    for i in range(s):
        rows = coord - off[i]
        row_in = (rows >= 0) & (rows < n)
        row_idx = np.clip(rows, 0, n - 1) // p
        col_raw = np.zeros((classes, g, n))  # sum over j at patch row, x
        col_scaled = np.zeros((classes, g, n))
        for j in range(s):
            cols = coord - off[j]
            col_in = (cols >= 0) & (cols < n)
            values = lg[i, j][:, np.clip(cols, 0, n - 1) // p, :] * col_in[None, :, None]  # (row, x, c)
            col_raw += values.transpose(2, 0, 1)
            col_scaled += values.transpose(2, 0, 1) * weight[i, j][:, None, None]
        raw += col_raw[:, row_idx, :] * row_in[None, :, None]
        scaled += col_scaled[:, row_idx, :] * row_in[None, :, None]
    zero = int(np.flatnonzero(off == 0)[0])
    return {"logits": means[zero, zero], "raw": raw / (s * s), "scaled": scaled / (s * s)}


def emulate_overlay(
    gray: np.ndarray,
    value_map: np.ndarray,
    crop: tuple[int, int, int],
    vmax: float,
    lut: np.ndarray,
    alpha_max: float = 0.6,
) -> np.ndarray:
    """overlay_kernel in numpy: float64 sample coordinates, float32 column-then-row blend,
    rintf rounding. ``crop`` = (top, left, side); returns ``(h, w, 3) uint8``."""
    top, left, side = crop
    out = np.repeat(gray[:, :, None], 3, axis=2)
    vmax32 = F32(vmax)
    if not (vmax32 > 0) or not np.isfinite(vmax32):
        return out
    n = value_map.shape[0]

    def taps(pixels: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coordinate = ((pixels.astype(np.float64) + 0.5) - float(start)) * float(n) / float(side) - 0.5
        coordinate = np.minimum(np.maximum(coordinate, 0.0), float(n - 1))
        floor = np.floor(coordinate)
        i0 = floor.astype(np.int64)
        return i0, np.minimum(i0 + 1, n - 1), (coordinate - floor).astype(F32)

    ys, xs = np.arange(top, top + side), np.arange(left, left + side)
    r0, r1, wr = taps(ys, top)
    c0, c1, wc = taps(xs, left)
    m = np.asarray(value_map, dtype=F32)
    one = F32(1.0)
    wc_, wr_ = wc[None, :], wr[:, None]
    top_row = m[r0][:, c0] * (one - wc_) + m[r0][:, c1] * wc_
    bottom_row = m[r1][:, c0] * (one - wc_) + m[r1][:, c1] * wc_
    sample = (top_row * (one - wr_) + bottom_row * wr_).astype(F32)
    t = np.fmin(np.fmax((sample / vmax32).astype(F32), F32(-1.0)), one)
    index = np.clip(np.rint(((t + one) * F32(127.5)).astype(F32)), 0, 255).astype(np.int64)
    a = (F32(alpha_max) * np.abs(t)).astype(F32)
    base = gray[top : top + side, left : left + side].astype(F32)
    keep = ((one - a) * base).astype(F32)
    for ch in range(3):
        blended = (keep + (a * lut[index, ch].astype(F32)).astype(F32)).astype(F32)
        out[top : top + side, left : left + side, ch] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
