#!/usr/bin/env python3
"""Byte-exact test vectors for llama.cpp's ternary block formats TQ1_0 (GGML type 34) and
TQ2_0 (GGML type 35), produced by an implementation independent of tern: the `gguf` Python
package's own `gguf.quants.quantize` / `gguf.quants.dequantize` (gguf 0.19.0).

Writes tests/fixtures/tq/:

* `<case>.bin`        the raw quantised bytes, rows one after another (row r starts at
                      r * cols/256 * block_bytes), exactly what a GGUF tensor's data holds.
* `<input>.input.f32` (non-ternary inputs only) the f32 input matrix, little-endian, row-major.
* `<input>.q8k.bin`   a Q8_K activation row (see "vec_dot" below), 292 bytes per 256 values.
* `cases.json`        everything a Rust test needs (described in tests/fixtures/tq/README.md).
* `README.md`         the format notes and the generators, for humans.

Inputs (all generated from integers, so Rust can regenerate them without reading files):

* SplitMix-style mixer (the one of /work/shared/vectors/bitnet-cpp/README.md), for flat
  row-major element index i and a seed, on wrapping unsigned 64-bit integers:
      x = (i + 1) * 0x9E3779B97F4A7C15 + seed; x ^= x >> 31; x *= 0xBF58476D1CE4E5B9; x ^= x >> 29
* ternary:  t = (x mod 3) - 1,  W = scale * t  (scale is f16-exact, so dequantisation gives W back
  bit for bit); optional `zero_blocks` [[row, block], ...] are forced to all-zero.
* uniform:  u = ((x >> 40) / 2^23) - 1  (exact in f32, in [-1, 1)).
* mixed (non-ternary): per 256-block a magnitude M from a fixed list, values M * u, then a few
  positions overwritten with the block max (+-M), exact rounding ties (+-M/2), values just below a
  tie, +0.0 and -0.0, so the quantiser's d choice, round-half-away-from-zero and f16 rounding
  (including an f16-subnormal d) are all exercised. The resulting f32 matrix is also stored
  (`.input.f32`), and that file is authoritative.

Checks (the script fails loudly if any is false):

1. gguf-py's bytes == a plain scalar transliteration of llama.cpp's `quantize_row_tq1_0_ref` /
   `quantize_row_tq2_0_ref` (ggml/src/ggml-quants.c) below, for every case.
2. gguf-py's `dequantize` == the transliteration of `dequantize_row_tq1_0` / `_tq2_0`, bit for bit.
3. Pure ternary cases: dequantize(quantize(W)) == W exactly, and the decoded trits == t.
4. Every case: quantize(dequantize(bytes)) == bytes (the format is a fixed point).

vec_dot (llama.cpp's CPU path: `ggml_vec_dot_tq{1,2}_0_q8_K`, activations in Q8_K): for each case
an activation row a[c] = 0.75f * u(c, act_seed) is quantised with a transliteration of
`quantize_row_q8_K_ref` (NOT independent of this script: no Python Q8_K quantiser exists in
gguf-py), stored as `<input>.q8k.bin` (shared by the TQ1_0 and TQ2_0 case), and for each
weight row the exact per-block integer sums and the f32 result the scalar (generic) C kernel
would return are recorded. The result is also checked
against a float64 dot of gguf-py's dequantised weights and the dequantised Q8_K (rel. err < 1e-5).

Run from the repo root (< 2 s):   python3 scripts/make_tq_vectors.py
Deterministic: re-running gives byte-identical files (gguf 0.19.0, numpy 2.4).
"""

import hashlib
import importlib.metadata
import json
import os
import re
import struct

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "tq")

QK_K = 256
BLOCK_BYTES = {QT.TQ1_0: 54, QT.TQ2_0: 66}
TYPE_NAME = {QT.TQ1_0: "TQ1_0", QT.TQ2_0: "TQ2_0"}
Q8K_BLOCK_BYTES = 4 + QK_K + 2 * (QK_K // 16)  # 292

F32 = np.float32


# ----------------------------------------------------------------------------------------------
# Integer generators
# ----------------------------------------------------------------------------------------------

def mix(n, seed):
    """The mixer of /work/shared/vectors/bitnet-cpp/README.md for flat indices 0..n-1 (uint64)."""
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (i + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(29)
    return x


def ternary_codes(n, seed):
    return ((mix(n, seed) % np.uint64(3)).astype(np.int64) - 1).astype(np.int8)


def uniform_f32(n, seed):
    """((x >> 40) / 2^23) - 1: exact f32 values in [-1, 1)."""
    m = (mix(n, seed) >> np.uint64(40)).astype(np.float32)
    return (m / F32(2 ** 23) - F32(1)).astype(np.float32)


assert ternary_codes(8, 1).tolist() == [-1, -1, 1, -1, -1, 1, 1, -1]  # README sanity check


def ternary_input(rows, cols, seed, scale, zero_blocks):
    t = ternary_codes(rows * cols, seed).reshape(rows, cols)
    for r, b in zero_blocks:
        t[r, b * QK_K:(b + 1) * QK_K] = 0
    w = (t.astype(np.float32) * F32(scale)).astype(np.float32)
    return t, w


# Block magnitudes of the mixed case, cycled over global block index g = row * blocks_per_row + b.
# 1.0 and 2^-7: power-of-two maxima, so +-M/2 are exact ties (x * (1/M) == 0.5 exactly);
# 0.1, 1/3: neither f16-exact nor with an exact reciprocal; 3e-6: d becomes an f16 subnormal;
# 1000.0 and 2.5: ordinary.
MIXED_MAGS = [1.0, 0.1, 2.5, 0.0078125, 3.0e-6, 1000.0, 1.0 / 3.0]
# In-block positions overwritten (chosen to hit every TQ1_0 region: qs[0..32) covers 0..159,
# qs[32..48) covers 160..239, qh covers 240..255).
MIXED_OVERRIDES = [
    # (position, what)   what: "+M"/"-M" block max, "+H"/"-H" = +-M/2 (tie), "+h"/"-h" = the f32
    # just below M/2 in magnitude, "+0"/"-0" signed zeros
    (0, "maxsign"), (1, "+H"), (2, "-H"), (3, "+h"), (4, "-h"), (5, "+0"), (6, "-0"),
    (170, "+H"), (200, "-H"), (241, "+H"), (250, "-H"), (255, "+h"),
]


def mixed_input(rows, cols, seed):
    nb = cols // QK_K
    u = uniform_f32(rows * cols, seed).reshape(rows, cols)
    w = np.empty((rows, cols), dtype=np.float32)
    for r in range(rows):
        for b in range(nb):
            g = r * nb + b
            m = F32(MIXED_MAGS[g % len(MIXED_MAGS)])
            blk = (u[r, b * QK_K:(b + 1) * QK_K] * m).astype(np.float32)
            half = F32(m / F32(2))
            below = np.nextafter(half, F32(0), dtype=np.float32)
            for pos, what in MIXED_OVERRIDES:
                blk[pos] = {
                    "maxsign": m if g % 2 == 0 else -m,
                    "+H": half, "-H": -half, "+h": below, "-h": -below,
                    "+0": F32(0.0), "-0": F32(-0.0),
                }[what]
            w[r, b * QK_K:(b + 1) * QK_K] = blk
    return w


# ----------------------------------------------------------------------------------------------
# Scalar transliteration of llama.cpp (ggml/src/ggml-quants.c, ggml/src/ggml-cpu/quants.c)
# ----------------------------------------------------------------------------------------------

def f16_bits(x):
    return int(np.array([x], dtype=np.float32).astype(np.float16).view(np.uint16)[0])


def f16_to_f32(bits):
    return F32(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def lroundf(v):
    """C lroundf: round half away from zero (v is an exact f32, so double arithmetic is exact)."""
    a = abs(float(v))
    r = int(np.floor(a + 0.5))
    return -r if float(v) < 0 else r


def block_scale(x):
    amax = F32(0)
    for v in x:
        av = F32(abs(v))
        amax = av if av > amax else amax  # MAX(amax, fabsf(v))
    d = amax
    inv = F32(F32(1) / d) if d != 0 else F32(0)
    return d, inv


def code(v, inv):
    return lroundf(F32(F32(v) * inv)) + 1  # -1, 0, 1 -> 0, 1, 2


def c_quantize_tq1_0_block(x):
    d, inv = block_scale(x)
    qs = []
    # "5 elements per byte, along 32 bytes": qs[m] <- x[m + n*32], n = 0..4 (n = 0 most significant)
    for m in range(32):
        q = 0
        for n in range(5):
            q = q * 3 + code(x[m + n * 32], inv)
        qs.append((q * 256 + 242) // 243)  # ceiling division, 243 = 3^5
    # "along 16 bytes": qs[32 + m] <- x[160 + m + n*16]
    for m in range(16):
        q = 0
        for n in range(5):
            q = q * 3 + code(x[160 + m + n * 16], inv)
        qs.append((q * 256 + 242) // 243)
    # "4 elements per byte": qh[j] <- x[240 + j + m*4], m = 0..3, then *3 (5th trit = 0)
    qh = []
    for j in range(4):
        q = 0
        for m in range(4):
            q = q * 3 + code(x[240 + j + m * 4], inv)
        q *= 3
        qh.append((q * 256 + 242) // 243)
    return bytes(qs) + bytes(qh) + struct.pack("<H", f16_bits(d))


def c_quantize_tq2_0_block(x):
    d, inv = block_scale(x)
    qs = []
    for j in (0, 32):
        base = (j // 32) * 128
        for m in range(32):
            q = 0
            for n in range(4):
                q += (code(x[base + m + n * 32], inv) & 3) << (2 * n)
            qs.append(q)
    return bytes(qs) + struct.pack("<H", f16_bits(d))


POW3 = [1, 3, 9, 27, 81, 243]


def trit(byte, n):
    q = (byte * POW3[n]) & 0xFF  # uint8 product wraps: intended
    return ((q * 3) >> 8) - 1


def c_trits_tq1_0_block(blk):
    qs, qh = blk[:48], blk[48:52]
    out = []
    for n in range(5):
        out += [trit(qs[m], n) for m in range(32)]
    for n in range(5):
        out += [trit(qs[32 + m], n) for m in range(16)]
    for n in range(4):
        out += [trit(qh[j], n) for j in range(4)]
    return out


def c_trits_tq2_0_block(blk):
    out = []
    for j in (0, 32):
        for l in range(4):
            out += [((blk[j + m] >> (2 * l)) & 3) - 1 for m in range(32)]
    return out


def c_quantize(w, qtype):
    f = c_quantize_tq1_0_block if qtype == QT.TQ1_0 else c_quantize_tq2_0_block
    out = bytearray()
    for row in w:
        for b in range(len(row) // QK_K):
            out += f(row[b * QK_K:(b + 1) * QK_K])
    return bytes(out)


def c_blocks(data, qtype):
    bb = BLOCK_BYTES[qtype]
    return [data[k:k + bb] for k in range(0, len(data), bb)]


def c_trits(data, qtype):
    f = c_trits_tq1_0_block if qtype == QT.TQ1_0 else c_trits_tq2_0_block
    return [f(blk) for blk in c_blocks(data, qtype)]


def c_block_d(blk):
    return struct.unpack("<H", blk[-2:])[0]


def c_dequantize(data, qtype, rows, cols):
    out = []
    for blk, ts in zip(c_blocks(data, qtype), c_trits(data, qtype)):
        d = f16_to_f32(c_block_d(blk))
        out += [F32(F32(t) * d) for t in ts]
    return np.array(out, dtype=np.float32).reshape(rows, cols)


def nearest_int(v):
    """ggml's nearest_int: the 1.5*2^23 trick, i.e. round half to even."""
    return int(np.rint(F32(v)))


def c_quantize_q8_K(a):
    """quantize_row_q8_K_ref: per 256 values f32 d, int8 qs[256], int16 bsums[16]."""
    out = bytearray()
    for b in range(len(a) // QK_K):
        x = a[b * QK_K:(b + 1) * QK_K]
        amax, mx = F32(0), F32(0)
        for v in x:
            av = F32(abs(v))
            if av > amax:
                amax, mx = av, F32(v)
        assert amax != 0  # (all-zero block: d = 0, qs = 0, bsums left unwritten by the C code)
        iscale = F32(F32(-127.0) / mx)
        qs = [min(127, nearest_int(F32(iscale * F32(v)))) for v in x]
        bsums = [sum(qs[j * 16:(j + 1) * 16]) for j in range(16)]
        d = F32(F32(1) / iscale)
        out += struct.pack("<f", d) + struct.pack("<256b", *qs) + struct.pack("<16h", *bsums)
    return bytes(out)


def q8k_blocks(data):
    res = []
    for k in range(0, len(data), Q8K_BLOCK_BYTES):
        d = F32(struct.unpack("<f", data[k:k + 4])[0])
        qs = list(struct.unpack("<256b", data[k + 4:k + 260]))
        bsums = list(struct.unpack("<16h", data[k + 260:k + 292]))
        res.append((d, qs, bsums))
    return res


def c_vec_dot(wrow_blocks, wrow_trits, q8k):
    """ggml_vec_dot_tq{1,2}_0_q8_K_generic: per block an int sum of trit * q8, then
    sumf += (float) sum * (d_w * d_a), all in f32, blocks in order."""
    sumf = F32(0)
    isums = []
    for blk, ts, (da, qs, _) in zip(wrow_blocks, wrow_trits, q8k):
        isum = sum(t * q for t, q in zip(ts, qs))
        isums.append(isum)
        dw = f16_to_f32(c_block_d(blk))
        sumf = F32(sumf + F32(F32(isum) * F32(dw * da)))
    return isums, sumf


# ----------------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------------

def sha256(b):
    return hashlib.sha256(b).hexdigest()


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for byte in b:
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def f32_bits(v):
    return f"{int(np.array([v], dtype=np.float32).view(np.uint32)[0]):08x}"


def sample_positions(rows, cols):
    cs = [0, 1, 2, 3, 31, 32, 159, 160, 161, 175, 176, 239, 240, 241, 244, 255]
    if cols > QK_K:
        cs += [QK_K, QK_K + 240, cols - 1]
    return [(r, c) for r in sorted({0, rows - 1}) for c in sorted(set(cs))]


def compact_json(obj):
    """json.dumps(indent=1), but lists of scalars (and of such lists) stay on one line."""
    text = json.dumps(obj, indent=1)
    scalar_list = re.compile(r"\[(\s*(?:-?[0-9][0-9.eE+-]*|\"[^\"\n]*\"|true|false|null)"
                             r"(?:,\s*(?:-?[0-9][0-9.eE+-]*|\"[^\"\n]*\"|true|false|null))*)\s*\]")
    prev = None
    while prev != text:
        prev = text
        text = scalar_list.sub(lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)).strip() + "]", text)
        # lists whose items are all one-line lists
        text = re.sub(r"\[\s*\n\s*(\[[^\[\]\n]*\](?:,\s*\n\s*\[[^\[\]\n]*\])*)\s*\n\s*\]",
                      lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]", text)
    assert json.loads(text) == obj
    return text


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

# (input name, rows, cols, input spec)
INPUTS = [
    ("ternary_4x256_s11", 4, 256, {"kind": "ternary", "seed": 11, "scale": 0.8125, "zero_blocks": []}),
    ("ternary_3x512_s12", 3, 512, {"kind": "ternary", "seed": 12, "scale": 1.5, "zero_blocks": []}),
    ("ternary_2x2560_s13", 2, 2560, {"kind": "ternary", "seed": 13, "scale": 0.0625, "zero_blocks": []}),
    ("ternary_zeroblocks_2x768_s14", 2, 768,
     {"kind": "ternary", "seed": 14, "scale": 2.0, "zero_blocks": [[0, 1], [1, 0], [1, 2]]}),
    ("mixed_3x1024_s15", 3, 1024, {"kind": "mixed", "seed": 15}),
]
ACT_SEED_BASE = 100
ACT_SCALE = 0.75


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in os.listdir(OUT_DIR):  # regenerate from scratch (README.md is rewritten too)
        os.remove(os.path.join(OUT_DIR, name))

    cases = []
    for k, (iname, rows, cols, spec) in enumerate(INPUTS):
        assert cols % QK_K == 0
        nb = cols // QK_K
        if spec["kind"] == "ternary":
            t, w = ternary_input(rows, cols, spec["seed"], spec["scale"], spec["zero_blocks"])
            assert F32(spec["scale"]) == f16_to_f32(f16_bits(spec["scale"])), "scale must be f16-exact"
            input_desc = dict(spec)
        else:
            t = None
            w = mixed_input(rows, cols, spec["seed"])
            in_file = f"{iname}.input.f32"
            write(os.path.join(OUT_DIR, in_file), w.astype("<f4").tobytes())
            input_desc = {
                "kind": "mixed", "seed": spec["seed"], "file": in_file,
                "sha256": sha256(w.astype("<f4").tobytes()),
                "magnitudes": [float(F32(m)) for m in MIXED_MAGS],
                "overrides": [[p, what] for p, what in MIXED_OVERRIDES],
            }

        # Activation row for vec_dot (shared by the TQ1_0 and TQ2_0 case of this input).
        act_seed = ACT_SEED_BASE + k
        a = (uniform_f32(cols, act_seed) * F32(ACT_SCALE)).astype(np.float32)
        q8k = c_quantize_q8_K(a)
        q8k_parsed = q8k_blocks(q8k)
        q8k_file = f"{iname}.q8k.bin"
        write(os.path.join(OUT_DIR, q8k_file), q8k)

        for qtype in (QT.TQ1_0, QT.TQ2_0):
            tname = TYPE_NAME[qtype].lower()
            cname = f"{tname}_{iname}"

            # --- the independent implementation: gguf-py ---
            q = quantize(w, qtype)
            assert q.dtype == np.uint8 and q.shape == (rows, nb * BLOCK_BYTES[qtype]), q.shape
            data = q.tobytes()
            deq = dequantize(q, qtype)
            assert deq.dtype == np.float32 and deq.shape == (rows, cols)

            # --- checks ---
            assert data == c_quantize(w, qtype), f"{cname}: gguf-py bytes != C transliteration"
            cdeq = c_dequantize(data, qtype, rows, cols)
            assert deq.view(np.uint32).tolist() == cdeq.view(np.uint32).tolist(), cname
            trits = c_trits(data, qtype)
            if t is not None:
                flat = [x for blk in trits for x in blk]
                assert flat == t.reshape(-1).tolist(), f"{cname}: decoded trits != t"
                assert deq.view(np.uint32).tolist() == w.view(np.uint32).tolist(), \
                    f"{cname}: dequantize(quantize(W)) != W"
            assert quantize(deq, qtype).tobytes() == data, f"{cname}: not a fixed point"

            bin_file = f"{cname}.bin"
            write(os.path.join(OUT_DIR, bin_file), data)

            # --- dequantisation summary (from gguf-py's dequantize) ---
            vals = deq.reshape(-1)
            s = 0.0
            sa = 0.0
            for v in vals.tolist():  # sequential f64 accumulation, row-major order
                s += v
                sa += abs(v)
            blocks = c_blocks(data, qtype)
            d_bits = [[c_block_d(blocks[r * nb + b]) for b in range(nb)] for r in range(rows)]
            samples = [[r, c, f32_bits(deq[r, c]), float(deq[r, c])]
                       for r, c in sample_positions(rows, cols)]

            # --- vec_dot with Q8_K ---
            isums, results = [], []
            for r in range(rows):
                wb = blocks[r * nb:(r + 1) * nb]
                wt = trits[r * nb:(r + 1) * nb]
                isum, res = c_vec_dot(wb, wt, q8k_parsed)
                isums.append(isum)
                results.append(res)
                # cross-check with a float64 dot of gguf-py's dequantised weights
                a_deq = np.concatenate([np.float64(d) * np.array(qs, dtype=np.float64)
                                        for d, qs, _ in q8k_parsed])
                ref = float(np.dot(deq[r].astype(np.float64), a_deq))
                assert abs(float(res) - ref) <= 1e-5 * max(1.0, abs(ref)), (cname, r, res, ref)


            cases.append({
                "name": cname,
                "type": TYPE_NAME[qtype],
                "ggml_type": int(qtype),
                "rows": rows,
                "cols": cols,
                "blocks_per_row": nb,
                "block_bytes": BLOCK_BYTES[qtype],
                "input": input_desc,
                "file": bin_file,
                "bytes": len(data),
                "sha256": sha256(data),
                "ternary_roundtrip_exact": t is not None,
                "d_f16_bits": [[f"{x:04x}" for x in row] for row in d_bits],
                "dequant": {
                    "sum_f64_sequential": s,
                    "abs_sum_f64_sequential": sa,
                    "fnv1a64_f32_le": fnv1a64(deq.astype("<f4").tobytes()),
                    "samples": samples,
                },
                "vec_dot_q8_K": {
                    "act_seed": act_seed,
                    "act_scale": ACT_SCALE,
                    "q8k_file": q8k_file,
                    "q8k_sha256": sha256(q8k),
                    "block_isums": isums,
                    "result_f32": [float(x) for x in results],
                    "result_f32_bits": [f32_bits(x) for x in results],
                },
            })

    doc = {
        "about": "TQ1_0/TQ2_0 vectors from gguf-py's quantize/dequantize; see README.md here and "
                 "scripts/make_tq_vectors.py",
        "generator": {
            "gguf": importlib.metadata.version("gguf"),
            "numpy": np.__version__,
        },
        "mixer": "x = (i+1)*0x9E3779B97F4A7C15 + seed; x ^= x>>31; x *= 0xBF58476D1CE4E5B9; "
                 "x ^= x>>29 (wrapping u64, i = flat row-major index)",
        "ternary": "t = (x mod 3) - 1; W = scale * t; zero_blocks [[row, block]] forced to 0",
        "uniform": "u = f32(x >> 40) / 2^23 - 1 (exact f32 in [-1, 1))",
        "mixed": "block g = row*blocks_per_row + b: M = magnitudes[g % len]; W = f32(M * u); then "
                 "overrides at in-block positions: maxsign = +M if g even else -M, +H/-H = +-f32(M/2), "
                 "+h/-h = +-nextafter(f32(M/2), 0), +0/-0 = signed zeros. The .input.f32 file is "
                 "authoritative.",
        "activation": "a[c] = f32(u(c, act_seed) * 0.75), c = 0..cols-1 (seed applies to column index); "
                      "quantised by quantize_row_q8_K_ref (transliterated) into the .q8k.bin file",
        "cases": cases,
    }
    with open(os.path.join(OUT_DIR, "cases.json"), "w") as f:
        f.write(compact_json(doc) + "\n")
    with open(os.path.join(OUT_DIR, "README.md"), "w") as f:
        f.write(README)
    total = sum(os.path.getsize(os.path.join(OUT_DIR, n)) for n in os.listdir(OUT_DIR))
    assert total < 100_000, total
    print(f"wrote {len(cases)} cases to {OUT_DIR} ({total} bytes)")


README = """\
# TQ1_0 / TQ2_0 vectors (llama.cpp ternary block formats)

Generated by `python3 scripts/make_tq_vectors.py` (do not edit by hand). The quantised bytes come
from the `gguf` Python package's own `gguf.quants.quantize` (gguf 0.19.0), an implementation
independent of tern; the script also checks them against a scalar transliteration of llama.cpp's
`quantize_row_tq1_0_ref` / `quantize_row_tq2_0_ref` (ggml/src/ggml-quants.c).

Files: `<case>.bin` raw blocks (rows back to back, `cols/256` blocks per row), `<input>.input.f32`
(the non-ternary input, LE f32 row-major), `<input>.q8k.bin` a Q8_K activation row for the vec_dot
check, `cases.json` (all parameters and expected values).

## Layout (QK_K = 256 values per block; row length must be a multiple of 256)

TQ1_0, 54 bytes: `qs[48] | qh[4] | d: f16 LE`. Codes c = t + 1 in {0,1,2}.
* `qs[m]`, m < 32: the base-3 number c[m]·81 + c[m+32]·27 + c[m+64]·9 + c[m+96]·3 + c[m+128]
  (element m + 32n is digit n, n = 0 most significant), stored as ceil(v·256/243) = (v·256 + 242) / 243.
* `qs[32+m]`, m < 16: same with elements 160 + m + 16n, n = 0..4.
* `qh[j]`, j < 4: elements 240 + j + 4n, n = 0..3 as digits 81, 27, 9, 3 (the last digit is 0), then
  the same ceil(v·256/243).
* Decode digit n of a byte b: q = (b · 3^n) mod 256; c = (q · 3) >> 8; t = c - 1.

TQ2_0, 66 bytes: `qs[64] | d: f16 LE`. Byte `qs[32h + m]` (h = 0, 1; m < 32) holds elements
128h + m + 32l in bits 2l..2l+1 (l = 0..3, l = 0 in the low bits), code c = t + 1.

Quantiser (both): d = max |x| over the block (f32), id = 1/d (0 if d = 0), c = lroundf(x·id) + 1
(round half away from zero), stored d = f16(d) (round to nearest even). Dequantised value = (c-1)·f32(d).

vec_dot with Q8_K (`ggml_vec_dot_tq{1,2}_0_q8_K_generic`): per block isum = Σ t·q8 (int), then
`sumf += (float) isum * (f16_to_f32(d_w) * d_a)` in f32, blocks in order. Q8_K block (292 bytes):
`d: f32 LE | qs: i8[256] | bsums: i16 LE[16]`.

## cases.json fields
`name, type, ggml_type, rows, cols, blocks_per_row, block_bytes, file, bytes, sha256`;
`input`: `{kind: "ternary", seed, scale, zero_blocks}` (regenerate with the mixer, see top-level
`mixer`/`ternary`) or `{kind: "mixed", seed, file, sha256, magnitudes, overrides}`;
`ternary_roundtrip_exact`: dequantising gives the input back bit for bit;
`d_f16_bits[row][block]` the stored f16 scales (hex);
`dequant`: `sum_f64_sequential` / `abs_sum_f64_sequential` (f64, sequential, row-major),
`fnv1a64_f32_le` (FNV-1a 64 over the dequantised f32 LE bytes), `samples`: [row, col, f32 bits (hex), value];
`vec_dot_q8_K`: `act_seed`, `act_scale`, `q8k_file`, `q8k_sha256`, `block_isums[row][block]` (exact),
`result_f32` / `result_f32_bits` (the scalar C kernel's f32 result; SIMD kernels may differ in the
last bits, the integer sums may not).
"""


if __name__ == "__main__":
    main()
