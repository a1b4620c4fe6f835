#!/usr/bin/env python3
"""GGUF files laid out by OTHER tools' conventions (bitnet.cpp, llama.cpp), for tern's loader tests.

tern's own writer and reader agree with each other by construction; these files check the reader
against what bitnet.cpp's and llama.cpp's pipelines put on disk, without tern writing a byte of them.
Main input: tests/fixtures/wide/packed (BitNetForCausalLM, 2B-4T-like: hidden 256, ffn 512, 2 layers,
4 heads / 2 KV heads, vocab 400, tied embeddings, packed U8 projections + weight_scale = beta).

Writes tests/fixtures/foreign/:

* bitnetcpp_i2s.gguf      bitnet.cpp's 2B-4T pipeline (utils/convert-helper-bitnet.py:
                          convert-ms-to-gguf-bitnet.py --vocab-type bpe --outtype f32 [--pad-vocab],
                          then llama-quantize ... I2_S): arch "bitnet-b1.58", the same 23 metadata keys
                          in the same order and types as Microsoft's published ggml-model-i2_s.gguf
                          (minus padding_token_id, which this tokenizer does not have), token_embd F16,
                          norms F32, projections I2_S (type 36, x86 ACT_PARALLEL 128-weight blocks,
                          f32 beta in the first 4 bytes of the 32-byte tail), general.file_type 40.
* bitnetcpp_i2s_q6k.gguf  the same with token_embd Q6_K (type 14), quantised by a numpy
                          transliteration of llama.cpp's quantize_row_q6_K_ref.
* bitnetcpp_i2s_q6k.token_embd.f32
                          gguf-py's own gguf.quants.dequantize of that Q6_K tensor, [400, 256] f32 LE.
* llamacpp_tq2_0.gguf     mainline llama.cpp's convert_hf_to_gguf.py (BitnetModel, arch "bitnet")
                          with --outtype tq2_0: general.* from gguf-py's Metadata, TextModel keys,
                          rope.scaling linear 1.0, gpt2 BPE vocabulary, token_embd F16, norms F32,
                          projections TQ2_0 (type 35, d = f16(beta) per 256-block), file_type 37.
* llamacpp_tq1_0.gguf     the same with TQ1_0 (type 34), file_type 36.
* bitnetcpp_llama_i2s.gguf   from tests/fixtures/llama158/packed (LlamaForCausalLM, BitLinear U8 +
                          weight_scale that transformers divides by): bitnet.cpp's
                          utils/convert-hf-to-gguf-bitnet.py LlamaModel (--outtype f32) + llama-quantize
                          I2_S: arch "llama", codes / weight_scale, q/k rows permuted for NORM RoPE,
                          output/token_embd F16, projections I2_S with scale f32(1/weight_scale), except
                          attn_output (K = 192, not a multiple of 128) stored F16.
* bitnetcpp_1bitllm_i2s.gguf from tests/fixtures/onebit/fp16 (1bitLLM BitnetForCausalLM, fp16 masters):
                          the same converter's BitnetModel: arch "bitnet", weight_quant in fp16 (scale =
                          f16(1/s), s = f32(1/mean|W|)), sub-norms -> attn_sub_norm/ffn_sub_norm, no
                          permutation, rope scaling linear 1.0, tied (no output.weight).
* README.md               what each file is and where each convention comes from.

No key starts with "tern.". Every packer is checked byte for byte against the origin's own bytes
first (I2_S: /work/shared/vectors/bitnet-cpp or the committed copy in formats/tests/vectors;
TQ1_0/TQ2_0: tests/fixtures/tq and gguf-py's quantize), every file is read back with gguf-py's
GGUFReader (I2_S taught to it for the check only) and every projection is unpacked back to the
input's ternary codes.

Run from the repo root (~1 s):   python3 scripts/make_foreign_gguf.py
Deterministic: byte-identical output on re-run (gguf 0.19.0, numpy 2.4).
"""

import enum
import hashlib
import json
import math
import os
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tq_vectors  # noqa: E402  (its mixer; importing runs nothing)

import gguf
from gguf import GGUFValueType as VT

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "tests" / "fixtures" / "wide" / "packed"
LLAMA_SRC = REPO / "tests" / "fixtures" / "llama158" / "packed"  # LlamaForCausalLM + BitLinear (HF1BitLLM/Falcon3)
ONEBIT_SRC = REPO / "tests" / "fixtures" / "onebit" / "fp16"     # BitnetForCausalLM (1bitLLM), fp16 masters
OUT = REPO / "tests" / "fixtures" / "foreign"
ALIGN = 32
QK_K = 256

# ggml type ids
F32, F16, Q6_K, TQ1_0, TQ2_0, I2_S = 0, 1, 14, 34, 35, 36
TYPE_NAME = {F32: "F32", F16: "F16", Q6_K: "Q6_K", TQ1_0: "TQ1_0", TQ2_0: "TQ2_0", I2_S: "I2_S"}

PROJ = {  # HF module suffix -> GGUF name
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORM = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm",
}

# convert-ms-to-gguf-bitnet.py overrides the chat template for every arch containing "bitnet"
# (OutputFile.write_all); Microsoft's published file carries it ("{% for message in messages %}{% if lo...").
BITNETCPP_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n\\nBITNETAssistant: ' + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


# ----------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------

def read_safetensors(path):
    """Tensors in file order: name -> (dtype string, shape, raw bytes). No framework needed (bf16)."""
    buf = path.read_bytes()
    (n,) = struct.unpack_from("<Q", buf, 0)
    header = json.loads(buf[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                             key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], tuple(info["shape"]), buf[base + b:base + e])
    return out


def bf16_to_f32(raw, shape):
    u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
    return u.view(np.float32).reshape(shape)


def unpack_hf(packed):
    """transformers' pack_weights order: U8 [R, K]; row i*R + r of the [4R, K] ternary matrix is
    bits 2i..2i+1 of byte [r, c], code - 1."""
    R, K = packed.shape
    t = np.empty((4 * R, K), dtype=np.int8)
    for i in range(4):
        codes = (packed >> np.uint8(2 * i)) & np.uint8(3)
        assert (codes != 3).all()
        t[i * R:(i + 1) * R] = codes.astype(np.int8) - 1
    return t


def load_model():
    cfg = json.loads((SRC / "config.json").read_text())
    assert cfg["quantization_config"]["linear_class"] == "autobitlinear"  # W = weight_scale * t
    st = read_safetensors(SRC / "model.safetensors")
    tensors = []  # (gguf name, kind, payload) in checkpoint order, weight_scale folded in
    for name, (dtype, shape, raw) in st.items():
        if name.endswith(".weight_scale"):
            continue
        if name == "model.embed_tokens.weight":
            tensors.append(("token_embd.weight", "embd", bf16_to_f32(raw, shape)))
            continue
        if name == "model.norm.weight":
            tensors.append(("output_norm.weight", "norm", bf16_to_f32(raw, shape)))
            continue
        parts = name.split(".")
        assert parts[:2] == ["model", "layers"] and parts[-1] == "weight", name
        bid, mod = int(parts[2]), ".".join(parts[3:-1])
        if mod in NORM:
            tensors.append((f"blk.{bid}.{NORM[mod]}.weight", "norm", bf16_to_f32(raw, shape)))
        else:
            assert dtype == "U8", name
            sdt, sshape, sraw = st[name + "_scale"]
            assert sdt == "BF16" and sshape == (1,)
            beta = np.float32(bf16_to_f32(sraw, (1,))[0])
            t = unpack_hf(np.frombuffer(raw, dtype=np.uint8).reshape(shape))
            tensors.append((f"blk.{bid}.{PROJ[mod]}.weight", "proj", (t, beta)))
    return cfg, tensors


# ----------------------------------------------------------------------------------------------
# Packers
# ----------------------------------------------------------------------------------------------

def pack_i2s(t, scale):
    """bitnet.cpp I2_S, x86 ACT_PARALLEL: 128 consecutive weights (row-major) -> 32 bytes, byte p
    holds weight p (bits 7-6), 32+p (5-4), 64+p (3-2), 96+p (1-0), code = t + 1; then a 32-byte
    tail whose first 4 bytes are the f32 scale."""
    M, K = t.shape
    assert K % 128 == 0
    c = (t.reshape(-1, 4, 32).astype(np.uint8) + np.uint8(1))
    packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
    tail = np.zeros(32, dtype=np.uint8)
    tail[:4] = np.frombuffer(struct.pack("<f", float(scale)), dtype=np.uint8)
    return packed.reshape(-1).tobytes() + tail.tobytes()


def unpack_i2s(data, M, K):
    assert len(data) == M * K // 4 + 32
    b = np.frombuffer(data[:M * K // 4], dtype=np.uint8).reshape(-1, 32)
    c = np.stack([(b >> np.uint8(s)) & np.uint8(3) for s in (6, 4, 2, 0)], axis=1)
    assert (c != 3).all()
    scale = struct.unpack_from("<f", data, M * K // 4)[0]
    assert data[M * K // 4 + 4:] == bytes(28)
    return c.reshape(M, K).astype(np.int8) - 1, np.float32(scale)


def block_d(t, scale):
    """llama.cpp's TQ quantiser on W = scale * t: d = f16(max|x|) per 256-block, 0 for zero blocks."""
    nz = (t.reshape(-1, QK_K) != 0).any(axis=1)
    return np.where(nz, np.float16(scale), np.float16(0)).astype("<f2")


def pack_tq2_0(t, scale):
    """TQ2_0, 66 bytes per 256 weights: qs[32h + m] holds weight 128h + m + 32l in bits 2l..2l+1
    (code t + 1), then f16 d."""
    c = (t.reshape(-1, 2, 4, 32).astype(np.uint8) + np.uint8(1))
    qs = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    d = block_d(t, scale).view(np.uint8).reshape(-1, 2)
    return np.concatenate([qs.reshape(-1, 64), d], axis=1).tobytes()


def unpack_tq2_0(data, M, K):
    blk = np.frombuffer(data, dtype=np.uint8).reshape(-1, 66)
    qs = blk[:, :64].reshape(-1, 2, 1, 32)
    c = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
    assert (c != 3).all()
    d = blk[:, 64:].copy().view("<f2").reshape(-1)
    return c.reshape(M, K).astype(np.int8) - 1, d


def pack_tq1_0(t, scale):
    """TQ1_0, 54 bytes per 256 weights: qs[m] (m < 32) = weights m + 32n (n = 0..4, n = 0 most
    significant base-3 digit), qs[32 + m] (m < 16) = weights 160 + m + 16n, qh[j] (j < 4) =
    weights 240 + j + 4n (n = 0..3, times 3), each stored as ceil(v * 256 / 243); then f16 d."""
    c = (t.reshape(-1, QK_K).astype(np.int32) + 1)
    pw5 = np.array([81, 27, 9, 3, 1], dtype=np.int32)
    v0 = (c[:, :160].reshape(-1, 5, 32) * pw5.reshape(1, 5, 1)).sum(axis=1)
    v1 = (c[:, 160:240].reshape(-1, 5, 16) * pw5.reshape(1, 5, 1)).sum(axis=1)
    v2 = (c[:, 240:].reshape(-1, 4, 4) * pw5[:4].reshape(1, 4, 1)).sum(axis=1)
    v = np.concatenate([v0, v1, v2], axis=1)
    q = ((v * 256 + 242) // 243).astype(np.uint8)
    d = block_d(t, scale).view(np.uint8).reshape(-1, 2)
    return np.concatenate([q, d], axis=1).tobytes()


def unpack_tq1_0(data, M, K):
    blk = np.frombuffer(data, dtype=np.uint8).reshape(-1, 54)

    def digits(b, n):
        return [((((b.astype(np.uint32) * (3 ** k)) & 0xFF) * 3) >> 8).astype(np.int8) for k in range(n)]

    out = np.empty((blk.shape[0], QK_K), dtype=np.int8)
    for k, dg in enumerate(digits(blk[:, :32], 5)):
        out[:, 32 * k:32 * k + 32] = dg
    for k, dg in enumerate(digits(blk[:, 32:48], 5)):
        out[:, 160 + 16 * k:160 + 16 * k + 16] = dg
    for k, dg in enumerate(digits(blk[:, 48:52], 4)):
        out[:, 240 + 4 * k:240 + 4 * k + 4] = dg
    assert (out <= 2).all()
    d = blk[:, 52:].copy().view("<f2").reshape(-1)
    return out.reshape(M, K) - 1, d


# --- Q6_K: numpy transliteration of llama.cpp's quantize_row_q6_K_ref / make_qx_quants -------

def nearest_int(x):
    return np.rint(x.astype(np.float32)).astype(np.int32)  # round half to even, as the C trick


def make_qx_quants_16_32(x):
    """make_qx_quants(n = 16, nmax = 32, rmse_type = 1, qw = NULL) for a batch of sub-blocks [S, 16]
    in float32 with the C loop's summation order. Returns (scale [S], L [S, 16] in 0..63)."""
    f32 = np.float32
    S, n = x.shape
    nmax = 32
    amax_idx = np.argmax(np.abs(x), axis=1)  # first maximum, as the strict '>' scan
    mx = x[np.arange(S), amax_idx]
    amax = np.abs(mx)
    zero = amax < f32(1e-15)
    safe = np.where(zero, f32(1), mx).astype(f32)
    w = (x * x).astype(f32)

    def trial(iscale):
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = l.astype(f32)
        sumlx = np.zeros(S, f32)
        suml2 = np.zeros(S, f32)
        for i in range(n):
            sumlx = (sumlx + (w[:, i] * x[:, i]) * lf[:, i]).astype(f32)
            suml2 = (suml2 + (w[:, i] * lf[:, i]) * lf[:, i]).astype(f32)
        return l, sumlx, suml2

    iscale = (f32(-nmax) / safe).astype(f32)
    l, sumlx, suml2 = trial(iscale)
    L = l + nmax
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0)).astype(f32)
    best = (scale * sumlx).astype(f32)
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = (-(f32(nmax) + f32(0.1) * f32(is_)) / safe).astype(f32)
        l, sumlx, suml2 = trial(iscale)
        better = (suml2 > 0) & ((sumlx * sumlx).astype(f32) > (best * suml2).astype(f32))
        L = np.where(better[:, None], l + nmax, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = np.where(better, sumlx / np.where(better, suml2, f32(1)), scale).astype(f32)
        best = np.where(better, (new_scale * sumlx).astype(f32), best).astype(f32)
        scale = new_scale
    scale = np.where(zero, f32(0), scale).astype(f32)
    L = np.where(zero[:, None], 0, L)
    return scale, L


def quantize_q6_k(x):
    """[rows, K] f32 -> Q6_K bytes (210 per 256 values: ql[128] qh[64] scales[16] d f16)."""
    f32 = np.float32
    x = np.ascontiguousarray(x, dtype=f32).reshape(-1, QK_K)
    nb = x.shape[0]
    scales, L = make_qx_quants_16_32(x.reshape(-1, 16))
    scales = scales.reshape(nb, 16)
    L = L.reshape(nb, QK_K).astype(np.int32)
    ai = np.argmax(np.abs(scales), axis=1)
    max_scale = scales[np.arange(nb), ai]
    empty = np.abs(max_scale) < f32(1e-15)
    iscale = (f32(-128) / np.where(empty, f32(1), max_scale)).astype(f32)
    d16 = np.where(empty, np.float16(0), (f32(1) / iscale).astype(np.float16)).astype("<f2")
    sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
    sc = np.where(empty[:, None], np.int8(0), sc)
    dsub = (d16.astype(f32)[:, None] * sc.astype(f32)).astype(f32)  # [nb, 16]
    with np.errstate(divide="ignore", invalid="ignore"):
        l = nearest_int(x.reshape(nb, 16, 16) / dsub[:, :, None])
    l = np.clip(l, -32, 31) + 32
    L = np.where((dsub != 0)[:, :, None], l, L.reshape(nb, 16, 16)).reshape(nb, QK_K)
    L = np.where(empty[:, None], 0, L).astype(np.uint8)
    ql = np.empty((nb, 128), np.uint8)
    qh = np.empty((nb, 64), np.uint8)
    for h in range(2):
        j = 128 * h
        a, b, c, e = (L[:, j + o:j + o + 32] for o in (0, 32, 64, 96))
        ql[:, 64 * h:64 * h + 32] = (a & 0xF) | ((c & 0xF) << 4)
        ql[:, 64 * h + 32:64 * h + 64] = (b & 0xF) | ((e & 0xF) << 4)
        qh[:, 32 * h:32 * h + 32] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    return np.concatenate([ql, qh, sc.view(np.uint8), d16.view(np.uint8).reshape(nb, 2)], axis=1).tobytes()


# ----------------------------------------------------------------------------------------------
# Packer checks against the origins' own bytes
# ----------------------------------------------------------------------------------------------

def mixer_trits(n, seed):
    """The shared vectors' trit mixer (scripts/make_tq_vectors.py defines it once)."""
    return make_tq_vectors.ternary_codes(n, seed)


def check_packers():
    done = []
    for vec_dir in (Path("/work/shared/vectors/bitnet-cpp"), REPO / "formats" / "tests" / "vectors"):
        if not (vec_dir / "cases.json").is_file():
            continue
        for c in json.loads((vec_dir / "cases.json").read_text()):
            if c["layout"] != "i2_s" or not (vec_dir / c["file"]).is_file():
                continue
            t = mixer_trits(c["M"] * c["K"], c["seed"]).reshape(c["M"], c["K"])
            ref = (vec_dir / c["file"]).read_bytes()
            assert pack_i2s(t, c["scale"]) == ref, c["file"]
            back, s = unpack_i2s(ref, c["M"], c["K"])
            assert (back == t).all() and s == np.float32(c["scale"])
            done.append(f"{vec_dir.name}/{c['file']}")
        break
    assert done, "no I2_S reference vectors found"
    tq = REPO / "tests" / "fixtures" / "tq"
    pack = {"TQ1_0": pack_tq1_0, "TQ2_0": pack_tq2_0}
    unpack = {"TQ1_0": unpack_tq1_0, "TQ2_0": unpack_tq2_0}
    for c in json.loads((tq / "cases.json").read_text())["cases"]:
        if c["input"]["kind"] != "ternary":
            continue
        R, K = c["rows"], c["cols"]
        t = mixer_trits(R * K, c["input"]["seed"]).reshape(R, K)
        for r, b in c["input"]["zero_blocks"]:
            t[r, b * QK_K:(b + 1) * QK_K] = 0
        ref = (tq / c["file"]).read_bytes()
        assert pack[c["type"]](t, c["input"]["scale"]) == ref, c["file"]
        back, _ = unpack[c["type"]](ref, R, K)
        assert (back == t).all(), c["file"]
        done.append(f"tq/{c['file']}")
    return done


# ----------------------------------------------------------------------------------------------
# GGUF serialisation (own writer: gguf-py's GGUFWriter does not know I2_S)
# ----------------------------------------------------------------------------------------------

def nbytes_for(ttype, dims):
    n = int(np.prod(dims))
    if ttype == I2_S:
        return n // 4 + 32  # bitnet.cpp's ggml_nbytes for I2_S
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
    assert dims[0] % block == 0
    return n // block * size


def pack_value(v, vt, sub=None):
    if vt == VT.STRING:
        b = v.encode("utf-8")
        return struct.pack("<Q", len(b)) + b
    if vt == VT.ARRAY:
        out = struct.pack("<IQ", sub, len(v))
        if sub == VT.STRING:
            return out + b"".join(pack_value(x, VT.STRING) for x in v)
        fmt = {VT.INT32: "<i", VT.FLOAT32: "<f", VT.UINT32: "<I"}[sub]
        return out + b"".join(struct.pack(fmt, x) for x in v)
    fmt = {VT.UINT32: "<I", VT.INT32: "<i", VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT16: "<H"}[vt]
    return struct.pack(fmt, v)


def write_gguf(path, kvs, tensors):
    """kvs: [(key, type, value, subtype)]; tensors: [(name, dims (ne order), ggml type, bytes)]."""
    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, vt, val, sub in kvs:
        out += pack_value(key, VT.STRING) + struct.pack("<I", vt) + pack_value(val, vt, sub)
    offset = 0
    for name, dims, ttype, data in tensors:
        assert len(data) == nbytes_for(ttype, dims), name
        out += pack_value(name, VT.STRING) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ttype, offset)
        offset += (len(data) + ALIGN - 1) // ALIGN * ALIGN
    out += bytes(-len(out) % ALIGN)
    for _, _, _, data in tensors:
        out += data + bytes(-len(data) % ALIGN)
    path.write_bytes(bytes(out))


def kvs_from_writer(w):
    out = []
    for k, v in w.kv_data[0].items():
        sub = v.sub_type
        if v.type == VT.ARRAY and sub is None:
            sub = VT.get_type(v.value[0])
        out.append((k, v.type, v.value, sub))
    return out


# ----------------------------------------------------------------------------------------------
# Vocabularies
# ----------------------------------------------------------------------------------------------

def tokenizer_json(src=SRC):
    return json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))


def merges(src=SRC):
    sv = gguf.SpecialVocab(src, load_merges=True)  # converts tokenizer.json's pair form to "a b"
    return sv.merges


def bitnetcpp_vocab(n_vocab):
    """convert-ms-to-gguf-bitnet.py's BpeVocab (+ --pad-vocab): the model vocabulary in id order,
    score 0.0, NORMAL; added tokens NOT in model.vocab, then <dummyNNNNN> pads: score -1000, CONTROL.
    (This tokenizer keeps its three special tokens inside model.vocab, so they come out NORMAL.)"""
    tj = tokenizer_json()
    vocab = tj["model"]["vocab"]
    added = {a["content"]: a["id"] for a in tj["added_tokens"] if a["content"] not in vocab}
    rev = {i: s for s, i in vocab.items()}
    tokens = [rev[i] for i in range(len(vocab))]
    scores = [0.0] * len(tokens)
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    extra = [s for s, _ in sorted(added.items(), key=lambda kv: kv[1])]
    extra += [f"<dummy{i:05}>" for i in range(1, n_vocab - len(tokens) - len(extra) + 1)]
    tokens += extra
    scores += [-1000.0] * len(extra)
    types += [int(gguf.TokenType.CONTROL)] * len(extra)
    assert len(tokens) == n_vocab
    return tokens, scores, types


def llamacpp_vocab(n_vocab):
    """convert_hf_to_gguf.py's get_vocab_base: [PAD<i>] UNUSED for ids past the tokenizer, special
    added tokens CONTROL, other added tokens USER_DEFINED, the rest NORMAL."""
    tj = tokenizer_json()
    rev = {i: s for s, i in tj["model"]["vocab"].items()}
    added = {a["id"]: a for a in tj["added_tokens"]}
    for i, a in added.items():
        rev[i] = a["content"]
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(rev[i])
            types.append(int(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(rev[i])
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def tensor_list(tensors, proj_type, embd_type):
    out = []
    for name, kind, p in tensors:
        if kind == "norm":
            out.append((name, [p.shape[0]], F32, p.astype("<f4").tobytes()))
        elif kind == "embd":
            dims = [p.shape[1], p.shape[0]]
            data = p.astype("<f2").tobytes() if embd_type == F16 else quantize_q6_k(p)
            out.append((name, dims, embd_type, data))
        else:
            t, beta = p
            packer = {I2_S: pack_i2s, TQ2_0: pack_tq2_0, TQ1_0: pack_tq1_0}[proj_type]
            out.append((name, [t.shape[1], t.shape[0]], proj_type, packer(t, beta)))
    return out


def bitnetcpp_file(cfg, tensors, embd_type):
    arch = "bitnet-b1.58"
    w = gguf.GGUFWriter(path=None, arch=arch)
    # OutputFile.add_meta_arch (convert-ms-to-gguf-bitnet.py): name = "bitnet2b_2501" when
    # n_ctx == 4096, else the model folder's parent directory name.
    w.add_name(SRC.parent.name)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_add_bos_token(True)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_file_type(40)  # converter writes 0 (AllF32); llama-quantize sets LLAMA_FTYPE_MOSTLY_I2_S in place
    tokens, scores, types = bitnetcpp_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_token_merges(merges())
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_chat_template(BITNETCPP_CHAT_TEMPLATE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)  # appended by llama-quantize
    return kvs_from_writer(w), tensor_list(tensors, I2_S, embd_type)


def llamacpp_file(cfg, tensors, proj_type):
    arch = "bitnet"
    tl = tensor_list(tensors, proj_type, F16)
    w = gguf.GGUFWriter(path=None, arch=arch)
    w.add_type(gguf.GGUFType.MODEL)
    total = sum(int(np.prod(d)) for _, d, _, _ in tl)
    meta = gguf.Metadata.load(None, SRC, None, total)
    if meta.size_label is None:
        meta.size_label = gguf.size_label(total, 0, 0, 0)
    meta.set_gguf_meta_model(w)
    # TextModel.set_gguf_parameters
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type({TQ2_0: gguf.LlamaFileType.MOSTLY_TQ2_0, TQ1_0: gguf.LlamaFileType.MOSTLY_TQ1_0}[proj_type])
    # BitnetModel.set_gguf_parameters
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(1.0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # _set_vocab_gpt2
    tokens, types = llamacpp_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # tokenizer.json pre_tokenizer is ByteLevel(use_regex=True): GPT-2 split
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(SRC, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    return kvs_from_writer(w), tl


# ----------------------------------------------------------------------------------------------
# bitnet.cpp's convert-hf-to-gguf-bitnet.py (+ llama-quantize ... I2_S 1): LlamaModel / BitnetModel
# ----------------------------------------------------------------------------------------------

LLAMA_NORM = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
ONEBIT_NORM = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.inner_attn_ln": "attn_sub_norm", "mlp.ffn_layernorm": "ffn_sub_norm",
}


def hf_permute(w, n_head, n_head_kv):
    """LlamaModel.permute (convert-hf-to-gguf-bitnet.py): rows of each head reordered from
    half-split (j, j + d/2) pairs to adjacent (2i, 2i + 1) pairs, as llama.cpp's NORM RoPE expects."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_unpermute(w, n_head):
    """Inverse of hf_permute with the effective head count (n_head for q, n_head_kv for k)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def f16_from_raw(raw, shape):
    return np.frombuffer(raw, dtype="<f2").reshape(shape)


def hf_layer_name(name, norm_map):
    """HF tensor name -> (GGUF name, kind); kind in embd/output/norm/proj."""
    if name == "model.embed_tokens.weight":
        return "token_embd.weight", "embd"
    if name == "lm_head.weight":
        return "output.weight", "output"
    if name == "model.norm.weight":
        return "output_norm.weight", "norm"
    parts = name.split(".")
    assert parts[:2] == ["model", "layers"] and parts[-1] == "weight", name
    bid, mod = int(parts[2]), ".".join(parts[3:-1])
    if mod in norm_map:
        return f"blk.{bid}.{norm_map[mod]}.weight", "norm"
    return f"blk.{bid}.{PROJ[mod]}.weight", "proj"


def load_llama158():
    """LlamaModel.write_tensors: every *.weight_scale read as f32; the U8 weight unpacked (shift
    [0, 2, 4, 6] on a new leading dim, & 3, - 1, reshape to [4R, K]) and divided by weight_scale in
    f32 (values +-f32(1/ws), 0); modify_tensors then permutes q (n_head, n_head) and k (n_head,
    n_head_kv). Tensors in safe_open(...).keys() order (sorted by name), weight_scale skipped.
    Payload for proj: (stored codes, f32 scale, original codes, permute head count or None)."""
    cfg = json.loads((LLAMA_SRC / "config.json").read_text())  # json keeps the LAST quantization_config
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "linear_class" not in cfg["quantization_config"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    st = read_safetensors(LLAMA_SRC / "model.safetensors")
    tensors = []
    for name in sorted(st):  # safetensors' safe_open.keys() returns the names sorted
        if name.endswith(".weight_scale"):
            continue
        dtype, shape, raw = st[name]
        gname, kind = hf_layer_name(name, LLAMA_NORM)
        if kind != "proj":
            assert dtype == "BF16", name
            tensors.append((gname, kind, bf16_to_f32(raw, shape)))
            continue
        assert dtype == "U8", name
        sdt, sshape, sraw = st[name + "_scale"]
        assert sdt == "BF16" and sshape == (1,)
        ws = np.float32(bf16_to_f32(sraw, (1,))[0])
        scale = np.float32(np.float32(1) / ws)  # torch: (codes - 1).float() / ws.float(), f32
        t = unpack_hf(np.frombuffer(raw, dtype=np.uint8).reshape(shape))
        heads = n_head if name.endswith("q_proj.weight") else n_kv if name.endswith("k_proj.weight") else None
        stored = t if heads is None else hf_permute(t, n_head, heads)
        assert heads is None or not np.array_equal(stored, t)
        tensors.append((gname, kind, (np.ascontiguousarray(stored), scale, t, heads)))
    return cfg, tensors


def onebit_weight_quant(w16):
    """BitnetModel.weight_quant on an fp16 tensor: w = w.float(); s = 1 / w.abs().mean().clamp(min=1e-5)
    (torch's 1 / t is t.reciprocal() * 1, all f32); result = (w * s).round().clamp(-1, 1) / s, cast back
    to fp16. So the stored values are t * f16(f32(1 / s)). The f32 mean is taken exactly (fsum) and
    rounded once; torch's own f32 reduction can differ by a few ulps, so the outcome is checked to be
    the same for any mean within +-16 ulps (codes and f16 beta are monotone in the mean).
    Returns (codes int8, beta16 as f32, the f32 mean)."""
    f32 = np.float32
    w = w16.astype(f32)

    def quant(mean):
        s = (f32(1) / np.maximum(mean, f32(1e-5))).astype(f32)
        t = np.clip(np.rint((w * s).astype(f32)), -1, 1).astype(np.int8)
        return t, np.float16((f32(1) / s).astype(f32))

    mean = f32(math.fsum(np.abs(w).astype(np.float64).ravel().tolist()) / w.size)
    t, b16 = quant(mean)
    lo, hi = mean, mean
    for _ in range(16):
        lo, hi = np.nextafter(lo, f32(-np.inf)), np.nextafter(hi, f32(np.inf))
    for m in (lo, hi):
        t2, b2 = quant(m)
        assert np.array_equal(t2, t) and b2 == b16
    return t, np.float32(b16), mean


def load_onebit():
    """BitnetModel.write_tensors on 1bitLLM fp16 masters: the 7 projections through weight_quant (fp16
    result), everything else as is; then --outtype f32 (fp16 -> f32 exact). No permutation."""
    cfg = json.loads((ONEBIT_SRC / "config.json").read_text())
    assert cfg["architectures"] == ["BitnetForCausalLM"] and cfg["model_type"] == "llama"
    st = read_safetensors(ONEBIT_SRC / "model.safetensors")
    golden = read_safetensors(ONEBIT_SRC / "golden" / "golden.safetensors")
    tensors, stats = [], []
    for name in sorted(st):
        dtype, shape, raw = st[name]
        assert dtype == "F16", name
        gname, kind = hf_layer_name(name, ONEBIT_NORM)
        w16 = f16_from_raw(raw, shape)
        if kind != "proj":
            tensors.append((gname, kind, w16.astype(np.float32)))
            continue
        t, beta16, mean = onebit_weight_quant(w16)
        # transformers' W.float().abs().mean() (golden beta) lies within the +-16 ulp window checked above
        gdt, _, graw = golden["beta." + name]
        assert gdt == "F32"
        tm = np.frombuffer(graw, "<f4")[0]
        ulps = abs(int(tm.view(np.int32)) - int(mean.view(np.int32)))
        assert ulps <= 16, name
        stats.append((gname, mean, tm, ulps, beta16))
        tensors.append((gname, kind, (t, beta16, t, None)))
    return cfg, tensors, stats


def post_processor_affixes(tj):
    """Contents of the special tokens TemplateProcessing puts before / after $A for a single sequence."""
    pp = tj.get("post_processor") or {}
    procs = pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            pre, post, seen = [], [], False
            for item in p["single"]:
                if "Sequence" in item:
                    seen = True
                    continue
                toks = p["special_tokens"][item["SpecialToken"]["id"]]["tokens"]
                (post if seen else pre).extend(toks)
            return "".join(pre), "".join(post)
    return "", ""


def bitnetcpp_hf_vocab(src, n_vocab):
    """convert-hf-to-gguf-bitnet.py Model.get_vocab_base: ids past the tokenizer -> "[PAD<i>]"
    USER_DEFINED; added tokens -> tokenizer.decode(tokenizer.encode(token)), CONTROL if special; the
    rest NORMAL. encode() runs the post-processor, which here prepends <|begin_of_text|>, so every
    added token comes out with that prefix (the Falcon3 change reverted from mainline llama.cpp for
    exactly this, ggml-org/llama.cpp PR #10864 -> #10883 `add_special_tokens=False`)."""
    tj = tokenizer_json(src)
    vocab = dict(tj["model"]["vocab"])
    added = {a["content"]: a for a in tj["added_tokens"]}
    for a in tj["added_tokens"]:
        vocab[a["content"]] = a["id"]
    rev = {i: s for s, i in vocab.items()}
    pre, post = post_processor_affixes(tj)
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.USER_DEFINED))
        elif rev[i] in added:
            assert added[rev[i]]["special"]  # decode of a special token is its content, verbatim
            tokens.append(pre + rev[i] + post)
            types.append(int(gguf.TokenType.CONTROL))
        else:
            tokens.append(rev[i])
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def bitnetcpp_hf_set_vocab_gpt2(w, src, cfg):
    """Model._set_vocab_gpt2 with the October-2024 gguf-py of bitnet.cpp's llama.cpp fork:
    SpecialVocab(load_merges=True) = merges (pair form joined), special ids from tokenizer_config
    (bos/eos/unk/sep/pad/cls/mask token content -> added_tokens id, then config.json *_token_id if
    an int), add_<typ>_token booleans from tokenizer_config, chat_template. No scores."""
    tokens, types = bitnetcpp_hf_vocab(src, cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    # get_vocab_base_pre hashes the tokenizer and raises NotImplementedError for this toy one; its
    # pre-tokenizer is GPT-2's ByteLevel regex, hence "gpt-2" (Llama3-8B-1.58 hashes to "llama-bpe").
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges(src))
    tj = tokenizer_json(src)
    tc = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    ids, flags = {}, {}
    typs = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
    for typ in typs:
        if isinstance(tc.get(f"add_{typ}_token"), bool):
            flags[typ] = tc[f"add_{typ}_token"]
        entry = tc.get(f"{typ}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(content, str):
            tid = next((a["id"] for a in tj["added_tokens"] if a["content"] == content), None)
            if isinstance(tid, int):
                ids.setdefault(typ, tid)
    for typ in typs:
        tid = cfg.get(f"{typ}_token_id")
        if isinstance(tid, int) and not isinstance(tid, bool):
            ids.setdefault(typ, tid)
    for typ, tid in ids.items():
        getattr(w, f"add_{typ}_token_id")(tid)
    for typ, val in flags.items():
        getattr(w, f"add_add_{typ}_token")(val)
    if isinstance(tc.get("chat_template"), str):
        w.add_chat_template(tc["chat_template"])


def bitnetcpp_hf_common(w, src, cfg):
    """Model.set_gguf_parameters (convert-hf-to-gguf-bitnet.py); general.file_type is written as 0
    (F32, --outtype f32) and set in place to 40 (MOSTLY_I2_S) by llama-quantize."""
    w.add_name(src.name)  # self.dir_model.name
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    if cfg.get("num_key_value_heads") is not None:
        w.add_head_count_kv(cfg["num_key_value_heads"])
    if cfg.get("rope_theta") is not None:
        w.add_rope_freq_base(cfg["rope_theta"])
    if cfg.get("rms_norm_eps") is not None:
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(40)


def bitnetcpp_hf_tensor_list(tensors):
    """llama-quantize ... I2_S 1 on the f32 GGUF: 1-D/norm tensors stay F32; token_embd and output
    F16 (llama_tensor_get_type, MOSTLY_I2_S); other 2-D tensors I2_S with scale = max|w| over the
    whole tensor (one thread, one chunk). I2_S packs 128 consecutive weights of the flattened tensor,
    so bitnet.cpp's kernels need K % 128 == 0; a projection with another K is stored F16 here
    (llama-quantize itself has no such check or fallback for I2_S)."""
    out = []
    for name, kind, p in tensors:
        if kind == "norm":
            out.append((name, [p.shape[0]], F32, p.astype("<f4").tobytes()))
        elif kind in ("embd", "output"):
            out.append((name, [p.shape[1], p.shape[0]], F16, p.astype("<f2").tobytes()))
        else:
            t, scale = p[0], p[1]
            dims = [t.shape[1], t.shape[0]]
            if t.shape[1] % 128 == 0:
                out.append((name, dims, I2_S, pack_i2s(t, scale)))
            else:
                w32 = (t.astype(np.float32) * scale).astype(np.float32)
                out.append((name, dims, F16, w32.astype("<f2").tobytes()))
    return out


def bitnetcpp_llama_file(cfg, tensors):
    w = gguf.GGUFWriter(path=None, arch="llama")
    bitnetcpp_hf_common(w, LLAMA_SRC, cfg)
    # LlamaModel.set_gguf_parameters
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    rs = cfg.get("rope_scaling")
    if rs is not None and "factor" in rs and rs.get("type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs["factor"])
    tc = json.loads((LLAMA_SRC / "tokenizer_config.json").read_text(encoding="utf-8"))
    if "add_prefix_space" in tc:
        w.add_add_space_prefix(tc["add_prefix_space"])
    assert cfg["vocab_size"] != 49152  # granite small: add_bos_token False
    # LlamaModel.set_vocab: no tokenizer.model (sentencepiece: FileNotFoundError); LlamaHfVocab needs a
    # byte_fallback BPE (FileNotFoundError) -> _set_vocab_gpt2
    assert not (LLAMA_SRC / "tokenizer.model").exists()
    assert not tokenizer_json(LLAMA_SRC)["model"].get("byte_fallback", False)
    bitnetcpp_hf_set_vocab_gpt2(w, LLAMA_SRC, cfg)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)  # appended by llama-quantize
    return kvs_from_writer(w), bitnetcpp_hf_tensor_list(tensors)


def bitnetcpp_1bitllm_file(cfg, tensors):
    w = gguf.GGUFWriter(path=None, arch="bitnet")
    bitnetcpp_hf_common(w, ONEBIT_SRC, cfg)
    # BitnetModel.set_gguf_parameters
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(1.0)
    # BitnetModel.set_vocab is _set_vocab_sentencepiece (tokenizer.model, model "llama", pre
    # "default", scores); this fixture has only tokenizer.json, on which the converter raises
    # FileNotFoundError. Substitute: the converter's own gpt2 path (Model.set_vocab's default).
    assert not (ONEBIT_SRC / "tokenizer.model").exists()
    bitnetcpp_hf_set_vocab_gpt2(w, ONEBIT_SRC, cfg)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return kvs_from_writer(w), bitnetcpp_hf_tensor_list(tensors)


def check_hf_codes(path, tensors, fixture_codes):
    """Independent of the writer: every projection read back with GGUFReader, decoded (I2_S unpack or
    sign of the F16 fallback), q/k un-permuted, equal to the fixture's own ternary codes."""
    raw = path.read_bytes()
    with i2s_known_to_gguf_py():
        r = gguf.GGUFReader(path)
        byname = {t.name: t for t in r.tensors}
        for name, kind, p in tensors:
            if kind != "proj":
                continue
            t = byname[name]
            M, K = int(t.shape[1]), int(t.shape[0])
            if int(t.tensor_type) == I2_S:
                off = int(t.data_offset)
                codes, scale = unpack_i2s(raw[off:off + M * K // 4 + 32], M, K)
                assert scale == p[1], name
            else:
                vals = np.asarray(t.data).reshape(M, K)
                codes = np.sign(vals).astype(np.int8)
                assert (np.abs(vals[codes != 0]) == np.float16(p[1])).all(), name
            if p[3] is not None:
                codes = hf_unpermute(codes, p[3])
            assert np.array_equal(codes, fixture_codes[name]), name


def fixture_codes_llama158():
    st = read_safetensors(LLAMA_SRC / "model.safetensors")
    out = {}
    for name, (dtype, shape, raw) in st.items():
        if dtype == "U8":
            out[hf_layer_name(name, LLAMA_NORM)[0]] = unpack_hf(np.frombuffer(raw, dtype=np.uint8).reshape(shape))
    return out


def fixture_codes_onebit():
    """Ternary codes of the fp16 masters, computed a second way (float64 W / mean|W|)."""
    st = read_safetensors(ONEBIT_SRC / "model.safetensors")
    out = {}
    for name, (dtype, shape, raw) in st.items():
        gname, kind = hf_layer_name(name, ONEBIT_NORM)
        if kind == "proj":
            w = f16_from_raw(raw, shape).astype(np.float64)
            x = w / np.abs(w).mean()
            assert np.abs(np.abs(x) - 0.5).min() > 1e-6  # far from a rounding boundary (min here 8.8e-6)
            out[gname] = np.clip(np.rint(x), -1, 1).astype(np.int8)
    return out


# ----------------------------------------------------------------------------------------------
# Read-back checks
# ----------------------------------------------------------------------------------------------

class i2s_known_to_gguf_py:
    """GGUFReader refuses type 36; teach it I2_S (4 weights per byte, tail not counted) for the check."""

    def __enter__(self):
        import gguf.constants as gc
        import gguf.gguf_reader as gr
        self.saved = (gc.GGMLQuantizationType, gr.GGMLQuantizationType, dict(gc.GGML_QUANT_SIZES))
        members = {m.name: m.value for m in gc.GGMLQuantizationType}
        members["I2_S"] = I2_S
        new = enum.IntEnum("GGMLQuantizationType", members)
        gc.GGML_QUANT_SIZES.clear()
        gc.GGML_QUANT_SIZES.update({new(int(k)): v for k, v in self.saved[2].items()})
        gc.GGML_QUANT_SIZES[new.I2_S] = (4, 1)
        gr.GGMLQuantizationType = new
        gc.GGMLQuantizationType = new
        return self

    def __exit__(self, *exc):
        import gguf.constants as gc
        import gguf.gguf_reader as gr
        gc.GGMLQuantizationType, gr.GGMLQuantizationType = self.saved[0], self.saved[1]
        gc.GGML_QUANT_SIZES.clear()
        gc.GGML_QUANT_SIZES.update(self.saved[2])


def field_value(f):
    vt = VT(f.types[0])
    if vt == VT.ARRAY:
        if VT(f.types[1]) == VT.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].item() for i in f.data]
    if vt == VT.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].item()


def check_file(path, kvs, tl, tensors):
    with i2s_known_to_gguf_py():
        r = gguf.GGUFReader(path)
        fields = {k: v for k, v in r.fields.items() if not k.startswith("GGUF.")}
        assert list(fields) == [k for k, *_ in kvs], (list(fields), [k for k, *_ in kvs])
        assert not any(k.startswith("tern.") for k in fields)
        for key, vt, val, sub in kvs:
            f = fields[key]
            assert VT(f.types[0]) == vt, key
            got = field_value(f)
            if vt == VT.FLOAT32:
                assert got == np.float32(val), key
            elif vt == VT.ARRAY and sub == VT.FLOAT32:
                assert got == [float(np.float32(x)) for x in val], key
            else:
                assert got == val, key
        byname = {t.name: t for t in r.tensors}
        assert [t.name for t in r.tensors] == [n for n, *_ in tl]
        raw = path.read_bytes()
        for (name, dims, ttype, data), (_, kind, p) in zip(tl, tensors):
            t = byname[name]
            assert int(t.tensor_type) == ttype and [int(x) for x in t.shape] == dims, name
            start = int(t.data_offset)
            assert start % ALIGN == 0 and raw[start:start + len(data)] == data, name
            if kind == "norm":
                assert np.array_equal(np.asarray(t.data), p), name
            elif kind in ("embd", "output") and ttype == F16:
                assert np.array_equal(np.asarray(t.data).reshape(p.shape), p.astype(np.float16)), name
            elif kind == "proj":
                codes, beta = p[0], p[1]
                M, K = codes.shape
                if ttype == F16:  # float fallback of a projection I2_S cannot hold (K % 128 != 0)
                    vals = np.asarray(t.data).reshape(M, K)
                    assert np.array_equal(vals, (codes.astype(np.float32) * beta).astype(np.float16)), name
                    back = np.sign(vals).astype(np.int8)
                elif ttype == I2_S:
                    back, scale = unpack_i2s(data, M, K)
                    assert scale == beta, name
                else:
                    back, d = (unpack_tq2_0 if ttype == TQ2_0 else unpack_tq1_0)(data, M, K)
                    nz = (codes.reshape(-1, QK_K) != 0).any(axis=1)
                    assert (d[nz] == np.float16(beta)).all() and (d[~nz] == 0).all(), name
                    # gguf-py's own quantiser/dequantiser agree with these bytes
                    w32 = (codes.astype(np.float32) * beta).astype(np.float32)
                    qt = gguf.GGMLQuantizationType(ttype)
                    assert gguf.quants.quantize(w32, qt).tobytes() == data, name
                    deq = gguf.quants.dequantize(np.frombuffer(data, np.uint8).reshape(M, -1), qt)
                    assert np.array_equal(deq, codes.astype(np.float32) * np.float32(np.float16(beta))), name
                assert np.array_equal(back, codes), name
    return r


# ----------------------------------------------------------------------------------------------

def main():
    checked = check_packers()
    cfg, tensors = load_model()
    OUT.mkdir(parents=True, exist_ok=True)
    report = {}

    def emit(fname, kvs, tl, src_tensors=tensors):
        path = OUT / fname
        write_gguf(path, kvs, tl)
        check_file(path, kvs, tl, src_tensors)
        report[fname] = (kvs, tl, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())

    emit("bitnetcpp_i2s.gguf", *bitnetcpp_file(cfg, tensors, F16))
    emit("bitnetcpp_i2s_q6k.gguf", *bitnetcpp_file(cfg, tensors, Q6_K))
    emit("llamacpp_tq2_0.gguf", *llamacpp_file(cfg, tensors, TQ2_0))
    emit("llamacpp_tq1_0.gguf", *llamacpp_file(cfg, tensors, TQ1_0))

    # bitnet.cpp's convert-hf-to-gguf-bitnet.py --outtype f32 + llama-quantize ... I2_S 1
    lcfg, ltensors = load_llama158()
    emit("bitnetcpp_llama_i2s.gguf", *bitnetcpp_llama_file(lcfg, ltensors), ltensors)
    check_hf_codes(OUT / "bitnetcpp_llama_i2s.gguf", ltensors, fixture_codes_llama158())
    ocfg, otensors, ostats = load_onebit()
    emit("bitnetcpp_1bitllm_i2s.gguf", *bitnetcpp_1bitllm_file(ocfg, otensors), otensors)
    check_hf_codes(OUT / "bitnetcpp_1bitllm_i2s.gguf", otensors, fixture_codes_onebit())

    # Q6_K embedding: gguf-py's own dequantisation, stored for tern's decoder to match.
    emb = next(p for n, k, p in tensors if k == "embd")
    q6 = next(d for n, _, ty, d in report["bitnetcpp_i2s_q6k.gguf"][1] if ty == Q6_K)
    deq = gguf.quants.dequantize(np.frombuffer(q6, np.uint8).reshape(emb.shape[0], -1), gguf.GGMLQuantizationType.Q6_K)
    assert deq.dtype == np.float32 and deq.shape == emb.shape
    err = np.abs(deq - emb)
    rel_rms = float(np.sqrt((err ** 2).mean() / (emb ** 2).mean()))
    assert rel_rms < 0.02, rel_rms
    f32_path = OUT / "bitnetcpp_i2s_q6k.token_embd.f32"
    f32_path.write_bytes(deq.astype("<f4").tobytes())

    (OUT / "README.md").write_text(readme(report, rel_rms, float(err.max()), checked,
                                          hashlib.sha256(f32_path.read_bytes()).hexdigest(), ostats),
                                   encoding="utf-8")
    for name, (kvs, tl, size, _) in report.items():
        print(f"{name}: {size} bytes, {len(kvs)} kv, {len(tl)} tensors")
    print(f"bitnetcpp_i2s_q6k.token_embd.f32: {f32_path.stat().st_size} bytes (Q6_K rel. RMS error {rel_rms:.4f})")
    print(f"packers checked against {len(checked)} reference files")


# ----------------------------------------------------------------------------------------------
# README
# ----------------------------------------------------------------------------------------------

def kv_table(kvs):
    rows = []
    for key, vt, val, sub in kvs:
        if vt == VT.ARRAY:
            first = [x for x in val[:3]]
            shown = f"[{len(val)} × {VT(sub).name.lower()}] {json.dumps(first, ensure_ascii=False)[:60]}…"
            typ = "array"
        else:
            typ = VT(vt).name.lower()
            v = float(np.float32(val)) if vt == VT.FLOAT32 else val
            shown = json.dumps(v, ensure_ascii=False)
            if len(shown) > 70:
                shown = shown[:70] + "…"
        shown = shown.replace("|", "\\|")
        rows.append(f"| `{key}` | {typ} | {shown} |")
    return "\n".join(["| key | type | value |", "|---|---|---|"] + rows)


def tensor_table(tl):
    rows = [f"| `{n}` | {TYPE_NAME[ty]} ({ty}) | {dims} | {len(d)} |" for n, dims, ty, d in tl]
    return "\n".join(["| tensor | type | dims (ne) | bytes |", "|---|---|---|---|"] + rows)


def readme(report, rel_rms, max_err, checked, f32_sha, ostats):
    files = "\n".join(f"| `{n}` | {size} | `{sha[:16]}…` |" for n, (_, _, size, sha) in report.items())
    b = report["bitnetcpp_i2s.gguf"]
    l2 = report["llamacpp_tq2_0.gguf"]
    hl = report["bitnetcpp_llama_i2s.gguf"]
    ho = report["bitnetcpp_1bitllm_i2s.gguf"]
    max_ulps = max(u for *_, u, _ in ostats)
    max_rel = max(abs(float(b16) / float(m) - 1) for _, m, _, _, b16 in ostats)
    return f"""# foreign/ — GGUF files written by other tools' conventions

Generated by `python3 scripts/make_foreign_gguf.py` from `tests/fixtures/wide/packed`,
`tests/fixtures/llama158/packed` and `tests/fixtures/onebit/fp16` (do not edit by hand; re-running
gives byte-identical files). tern wrote none of these bytes: they test tern's reader on files laid
out as bitnet.cpp and llama.cpp lay them out. No key starts with `tern.`.

| file | bytes | sha256 |
|---|---|---|
{files}
| `bitnetcpp_i2s_q6k.token_embd.f32` | {400 * 256 * 4} | `{f32_sha[:16]}…` |

| file | source fixture | arch | q/k rows permuted | ternary scale stored | float fallback |
|---|---|---|---|---|---|
| `bitnetcpp_i2s.gguf` | `wide/packed` | `bitnet-b1.58` | no | I2_S tail f32 β = `weight_scale` | none |
| `bitnetcpp_i2s_q6k.gguf` | `wide/packed` | `bitnet-b1.58` | no | I2_S tail f32 β = `weight_scale` | none (token_embd Q6_K) |
| `llamacpp_tq2_0.gguf` | `wide/packed` | `bitnet` | no | TQ2_0 block d = f16(β) | none |
| `llamacpp_tq1_0.gguf` | `wide/packed` | `bitnet` | no | TQ1_0 block d = f16(β) | none |
| `bitnetcpp_llama_i2s.gguf` | `llama158/packed` | `llama` | `attn_q` (`permute(w, n_head, n_head)`), `attn_k` (`permute(w, n_head, n_head_kv)`) | I2_S tail f32 `1/weight_scale` (= max\|w\|) | `blk.*.attn_output` F16 (K = 192, not a multiple of 128) |
| `bitnetcpp_1bitllm_i2s.gguf` | `onebit/fp16` | `bitnet` | no | I2_S tail f16(1/s) as f32, s = f32(1/mean\|W\|) (= max\|w\|) | none |

Common to all: GGUF v3, alignment 32 (no `general.alignment` key), tensor data padded to 32,
norms F32, ggml dims [K, M] (ne order). The four `wide/` files: tensors in the checkpoint's order
(`model.safetensors` order, `weight_scale` folded away) mapped to llama.cpp names, tied embeddings
(no `output.weight`), norms bf16 values (exact in F32), q/k rows not permuted (both tools run
BitNet with NEOX RoPE). Their ternary codes are the checkpoint's (`unpack` of transformers'
`pack_weights` order) and β is its `weight_scale` (bf16 → f32 exact, `autobitlinear`: W = β·t).

## bitnetcpp_i2s.gguf — bitnet.cpp's 2B-4T pipeline

Sources: microsoft/BitNet `utils/convert-helper-bitnet.py` (preprocess → `convert-ms-to-gguf-bitnet.py
--vocab-type bpe --outtype f32` → `llama-quantize … I2_S 1`), `utils/convert-ms-to-gguf-bitnet.py`
(`OutputFile.add_meta_arch`, `BpeVocab`, `write_all`), `setup_env.py`; Eddie-Wang1120/llama.cpp
(`gguf-py/gguf/constants.py`, `src/llama.cpp`); and a `llama_model_loader` dump of Microsoft's
published `microsoft/bitnet-b1.58-2B-4T-gguf/ggml-model-i2_s.gguf` (ikawrakow/ik_llama.cpp issue
#387), which lists exactly these keys, in this order, with these types (plus
`tokenizer.ggml.padding_token_id`, absent here because this tokenizer has no pad token):

{kv_table(b[0])}

* Architecture `bitnet-b1.58` (LLM_ARCH_BITNET_B158), as the published 2B-4T file. The stored
  `convert-ms-to-gguf-bitnet.py` writes `MODEL_ARCH.BITNET_25` = `bitnet-25` (the fork's name
  from March 2025; its C++ maps `bitnet-25` and `bitnet-b1.58` to the same graph,
  `build_bitnet_158`); later forks patch it to `BITNET_B158` "to match the official GGUF". A reader
  should accept both.
* `general.name`: the converter writes `bitnet2b_2501` when n_ctx == 4096, else the model folder's
  parent directory name (`wide`); the published file says `bitnet2b`.
* `rope.freq_base` from `rope_parameters.rope_theta` (this config uses transformers-5 spelling; the
  converter reads a top-level `rope_theta`, which the 2B-4T config has).
* `rope.dimension_count` = n_embd / n_head. No `tokenizer.ggml.pre` (the BPE path never writes
  one; llama.cpp then warns "missing pre-tokenizer type"). Scores are written (0.0 for the model
  vocabulary, −1000 for added/pad tokens). `general.file_type` = 40 (LLAMA_FTYPE_MOSTLY_I2_S,
  set in place by llama-quantize); `general.quantization_version` = 2 appended by llama-quantize.
* Vocabulary as `BpeVocab` + `--pad-vocab` (needed: config vocab 400 > tokenizer 384): the 384
  model-vocabulary tokens in id order, NORMAL (type 1) — including `<|begin_of_text|>`,
  `<|end_of_text|>`, `<|eot_id|>`, because this tokenizer keeps them inside `model.vocab`
  (the real 2B-4T tokenizer does not, so there they are CONTROL) — then `<dummy00001>` …
  `<dummy00016>` CONTROL (3). Merges from tokenizer.json (pair form → `"a b"`), bos 0, eos 1.
* Chat template: the converter's hard-coded one (`Human: … BITNETAssistant: …`), as published.
* Tensors: token_embd F16 (published file; `setup_env.py --quant-embd` passes
  `llama-quantize --token-embedding-type f16`), projections I2_S (36), ggml dims [K, M],
  M·K/4 bytes in 128-weight blocks (byte p of a 32-byte block: weight p in bits 7-6, 32+p in
  5-4, 64+p in 3-2, 96+p in 1-0; code t+1) followed by a 32-byte tail: f32 β then 28 zero bytes.
  No `<name>_scale` tensors (those are TL1/TL2 only).

{tensor_table(b[1])}

## bitnetcpp_i2s_q6k.gguf (+ .token_embd.f32)

Identical except `token_embd.weight` is Q6_K (type 14, 400 blocks × 210 bytes). Which bitnet.cpp
invocation yields Q6_K: stock llama-quantize treats a tied `token_embd` as the output tensor and
picks Q6_K when no `--token-embedding-type`/`--output-tensor-type` is given; bitnet.cpp's own
`--quant-embd` flags do NOT produce Q6_K (`setup_env.py --quant-embd` → `--token-embedding-type
f16`; `convert-hf-to-gguf-bitnet.py --quant-embd` only keeps the embedding F16 instead of F32).
Q6_K embeddings of 2B-4T are in use as derived files (e.g. `ggml-model-i2_s-embed-q6_k.gguf`).
The quantiser is a numpy transliteration of llama.cpp's `quantize_row_q6_K_ref` (make_qx_quants
with nmax 32, rmse_type 1; 8-bit sub-block scales, f16 d); it is not guaranteed bit-identical to
the C build (f32 summation/FMA), which does not matter: what tern must match is the decoding.
`bitnetcpp_i2s_q6k.token_embd.f32` is gguf-py's own `gguf.quants.dequantize` of that tensor,
[400, 256] row-major little-endian f32 (relative RMS error vs the F16 embedding {rel_rms:.4f},
max |error| {max_err:.3g}).

## llamacpp_tq2_0.gguf / llamacpp_tq1_0.gguf — mainline llama.cpp

Sources: ggml-org/llama.cpp `convert_hf_to_gguf.py` / `conversion/` (`BitnetModel`:
arch `bitnet`, `set_gguf_parameters` adds `rope.scaling.type` linear and `rope.scaling.factor`
1.0; `TextModel.set_gguf_parameters`; `ModelBase.prepare_metadata`; `_set_vocab_gpt2`;
`--outtype tq2_0|tq1_0`: 2-D projections quantised by gguf-py's TQ quantiser, token_embd/output
F16 "TODO: use Q4_K and Q6_K", 1-D F32), `src/models/bitnet.cpp` (loads no `output` tensor:
the lm_head is `tok_embd`), gguf-py 0.19.0 (`Metadata`, `SpecialVocab`, TQ quantisers).

{kv_table(l2[0])}

* No `bitnet.vocab_size`, no `bitnet.rope.dimension_count` (llama.cpp derives n_rot = head dim),
  no scores. Tokens: `[PAD384]` … `[PAD399]` UNUSED (5), the three special added tokens CONTROL (3),
  the rest NORMAL. `tokenizer.ggml.pre` = `gpt-2`: the real converter hashes the tokenizer and
  would refuse this toy one; its pre-tokenizer is GPT-2's ByteLevel regex, hence `gpt-2` (2B-4T
  itself hashes to `llama-bpe`). SpecialVocab writes merges, bos/eos ids, add_bos/add_sep/add_eos
  and the tokenizer_config chat template.
* **No `bitnet.hidden_activation`.** `{{arch}}.hidden_activation` (LLM_KV_HIDDEN_ACT) exists in
  llama.cpp (ModernBert, T5Gemma2, …), but neither mainline's BitnetModel nor bitnet.cpp's
  converters write it, and mainline's bitnet graph hard-codes `LLM_FFN_SILU`. Adding it for relu²
  was proposed in ggml-org/llama.cpp PR #26751 (closed, not merged) and microsoft/BitNet PR #605
  (open) for microsoft/BitNet issue #602 ("2B-4T runs FFN with SiLU instead of relu2"). The value
  would be the HF string `relu2`. So a reader must not require it and must not trust its absence.
* `general.file_type` 37 (MOSTLY_TQ2_0) / 36 (MOSTLY_TQ1_0). TQ2_0 blocks of 256: 64 bytes of
  2-bit codes (`qs[32h+m]` holds weight 128h+m+32l in bits 2l..2l+1) + f16 d; TQ1_0: 48 + 4 bytes
  of base-3 digits + f16 d. d = f16(max|x|) = f16(β) in every block with a non-zero weight, 0 in an
  all-zero block. The f16 rounding of β (up to 2^-11 relative) is the only scale information.
* Scale caveat: run literally on this `autobitlinear` checkpoint, mainline's `dequant_bitnet`
  divides by `weight_scale` ("The scale is inverted", right for the original 2B-4T release, where
  weight_scale = 1/β) and `BitnetModel.weight_quant` then re-ternarises with mean|W|, which turns
  the scale into β·(fraction of non-zeros). These files store what the checkpoint means, d = f16(β).

{tensor_table(l2[1])}

## bitnetcpp_llama_i2s.gguf / bitnetcpp_1bitllm_i2s.gguf — bitnet.cpp's HF converter

Pipeline (`setup_env.py`, quant type i2_s): `utils/convert-hf-to-gguf-bitnet.py <dir> --outtype f32`
then `llama-quantize ggml-model-f32.gguf ggml-model-i2_s.gguf I2_S 1` (one thread). Sources:
microsoft/BitNet `utils/convert-hf-to-gguf-bitnet.py` (`Model.set_gguf_parameters`,
`get_vocab_base`, `_set_vocab_gpt2`, `LlamaModel`, `BitnetModel`), `utils/convert.py`
(`LlamaHfVocab`), `src/ggml-bitnet-mad.cpp` (`quantize_i2_s`), `setup_env.py`; the fork
Eddie-Wang1120/llama.cpp `src/llama.cpp` (`llama_model_quantize_internal`, `llama_tensor_get_type`)
and its October-2024 gguf-py (`SpecialVocab`, pair-form merges supported since llama.cpp PR #9696).

* Key order: `general.architecture` (GGUFWriter), `Model.set_gguf_parameters` (`general.name` =
  the model folder's own name, block_count, context_length, embedding_length, feed_forward_length,
  head_count, head_count_kv, rope.freq_base from the top-level `rope_theta`,
  layer_norm_rms_epsilon, `general.file_type` written 0 and set in place to 40 by llama-quantize),
  the class's own keys, the vocabulary, then `general.quantization_version` = 2 appended by
  llama-quantize. No `{{arch}}.hidden_activation`, no `attention.key_length`/`value_length` (the
  converter never writes them), no `tokenizer.ggml.scores` on this path.
* Vocabulary (`Model._set_vocab_gpt2`): `tokenizer.ggml.model` `gpt2`; `tokenizer.ggml.pre` =
  `gpt-2` stands in for the tokenizer hash, which the real converter does not recognise for this
  toy tokenizer (it raises NotImplementedError; HF1BitLLM's Llama-3 tokenizer gives `llama-bpe`).
  Ids past the tokenizer are `[PAD384]` … `[PAD399]` USER_DEFINED (4), not UNUSED as in mainline.
  **Added tokens are stored as `tokenizer.decode(tokenizer.encode(token))`**, and `encode` runs
  the post-processor, which prepends `<|begin_of_text|>`: token 0 is
  `<|begin_of_text|><|begin_of_text|>`, 1 `<|begin_of_text|><|end_of_text|>`, 2
  `<|begin_of_text|><|eot_id|>` (CONTROL). Checked with transformers on this tokenizer; the same
  happens for any Llama-3 tokenizer (ggml-org/llama.cpp PR #10864, reverted and fixed with
  `add_special_tokens=False` in #10883; bitnet.cpp's converter keeps the unfixed line). Then
  SpecialVocab: merges (pair form → `"a b"`), bos/eos ids from tokenizer_config's token contents,
  `add_bos_token`/`add_eos_token` from tokenizer_config, its chat template.
* Tensors in `safe_open(...).keys()` order (sorted by name), mapped with gguf-py's tensor map.
  llama-quantize: 1-D and `*_norm.weight` stay F32; `token_embd` and `output` become F16
  (`llama_tensor_get_type`: MOSTLY_I2_S → F16 for both); every other 2-D tensor I2_S with one
  scale = max\|w\| over the whole tensor (`quantize_i2_s`, f64 max, stored as f32), codes = sign.
  I2_S layout as above (x86 ACT_PARALLEL, 128-weight blocks of the flattened tensor, 32-byte tail).

### bitnetcpp_llama_i2s.gguf — `LlamaModel` (LlamaForCausalLM: HF1BitLLM Llama3-8B-1.58, Falcon3-1.58bit)

{kv_table(hl[0])}

* Projections: the U8 weight unpacked exactly as transformers (row i·R + r from bits 2i..2i+1,
  code − 1) and divided by `weight_scale` (read as f32): values ±f32(1/weight_scale), so the I2_S
  scale is `np.float32(1) / np.float32(weight_scale)` (equal to the golden `beta.*`). q and k are
  then permuted, `w.reshape(n, 2, rows // n // 2, K).swapaxes(1, 2).reshape(rows, K)` with n = 4
  for q and n = 2 (n_head_kv) for k: within each head, stored row 2i + j is HF row j·d/2 + i
  (d = 48). llama.cpp runs arch `llama` with NORM (adjacent-pair) RoPE, which on these rows gives
  the attention scores of HF's half-split RoPE on the original rows. v, o, gate, up, down are not
  permuted.
* **`blk.*.attn_output.weight` is F16** (values t·f16(1/weight_scale)): its K = heads·head_dim = 192
  is not a multiple of 128. llama-quantize has no K check and no fallback for I2_S (its
  `nx % QK_K` fallback list covers the k-quants only; I2_S has block size 1), so run literally it
  would pack the flattened tensor into 128-weight blocks that straddle rows, and bitnet.cpp's
  `ggml_vec_dot_i2_i8_s` (row start = row·K/4 bytes, `n / 128` whole blocks per row) would
  compute it wrongly. F16 is what a float fallback stores; real Llama3-8B/Falcon3 have K = 4096 etc.
* `llama.rope.dimension_count` = `head_dim` = 48 ≠ hidden / heads = 32, and no `key_length`:
  llama.cpp's `llm_load_hparams` takes n_embd_head_k = n_embd / n_head = 32 and throws
  "invalid n_rot: 48, expected 32" for arch `llama` — in llama-quantize too, which loads hparams —
  so the real pipeline stops on this fixture. The file is what it writes when head_dim = hidden /
  heads (all real HF1BitLLM/Falcon3 models). A reader must take head_dim from
  `rope.dimension_count` (or q rows / n_head), not from n_embd / n_head.
* `output.weight` present (untied `lm_head`, bf16 → F16) and first in the file (`lm_head` sorts
  first); `token_embd` F16. No sub-norms. `llama.vocab_size` written.

{tensor_table(hl[1])}

### bitnetcpp_1bitllm_i2s.gguf — `BitnetModel` (BitnetForCausalLM: 1bitLLM bitnet_b1_58-large / -3B)

{kv_table(ho[0])}

* `BitnetModel.set_gguf_parameters` adds `bitnet.vocab_size`, `bitnet.rope.scaling.type` linear and
  `bitnet.rope.scaling.factor` 1.0; no `rope.dimension_count` (head dim = 128 / 4 = 32). No
  permutation (llama.cpp runs arch `bitnet` with NEOX RoPE). No activation key (llama.cpp's `bitnet`
  graph is SiLU; docs/research/issue7-families.md §3).
* `weight_quant` on each fp16 projection: `w.float()`, s = 1 / mean\|w\| (clamped at 1e-5; torch's
  `1 / t` is `t.reciprocal() * 1`, f32), t = round(w·s).clamp(−1, 1) (half to even), value t / s
  cast back to **fp16**. The I2_S scale is therefore f16(f32(1/s)), within 2^-11 of the f32 mean
  (here up to {max_rel:.2e} relative). The mean is taken exactly and rounded to f32; torch's own f32
  reduction (the golden `beta.*`) differs from it by up to {max_ulps} f32 ulp here; codes and the f16
  scale are checked to be identical for any mean within ±16 ulps.
* Sub-norms renamed by gguf-py's tensor map: `self_attn.inner_attn_ln` → `blk.N.attn_sub_norm`,
  `mlp.ffn_layernorm` → `blk.N.ffn_sub_norm`. Tied: no `output.weight`; `token_embd` F16.
* Vocabulary substitute: `BitnetModel.set_vocab` is `_set_vocab_sentencepiece` (tokenizer.model,
  `tokenizer.ggml.model` `llama`, pre `default`, scores, 32002 tokens on the hub models); on this
  fixture, which has only tokenizer.json, the converter raises FileNotFoundError. The block written
  here is the converter's own gpt2 path, identical to the llama file's.

{tensor_table(ho[1])}

## Checks made by the script

* Packers byte-exact against the origins' own bytes before anything is written: I2_S against
  bitnet.cpp's packer output (`/work/shared/vectors/bitnet-cpp/i2_s_*.bin` when present, else the
  committed copy in `formats/tests/vectors`), TQ1_0/TQ2_0 against the ternary cases of
  `tests/fixtures/tq` (gguf-py's quantiser), and unpacking each reference gives its matrix back.
* Each GGUF read back with gguf-py's `GGUFReader` (I2_S = 36 taught to it, 4 weights per byte,
  for the check only): key order, types and values, tensor names/types/dims/offsets/bytes; every
  projection unpacked back to the checkpoint's ternary codes; I2_S tail scale == β; TQ block
  d == f16(β) (0 for all-zero blocks), gguf-py's `quantize` reproduces the TQ bytes and its
  `dequantize` gives f16(β)·t exactly; F16/F32 tensors equal to the input values.
* The two HF-converter files, once more from the file alone: every projection decoded (I2_S unpack,
  or the sign of the F16 fallback, whose magnitudes all equal the f16 scale), q/k un-permuted,
  equal to the fixture's codes (llama158: transformers' unpack of the U8 weight; onebit:
  round(W / mean\|W\|) clamped, recomputed in float64).

"""


if __name__ == "__main__":
    main()
