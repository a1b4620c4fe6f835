#!/usr/bin/env python3
"""A random checkpoint with the exact shape and format of HF1BitLLM/Llama3-8B-1.58-100B-tokens,
for measuring conversion and verification at that size (numpy only; ~3.9 GB; never in the repo).

    python3 scripts/make_llama8b_shape.py --out /work/bench/llama8b-packed

LlamaForCausalLM, hidden 4096, 32 layers, 32 heads / 8 KV heads, FFN 14336, vocab 128256,
untied; projections packed U8 [out/4, in] (2-bit codes t + 1, never 3) with a BF16 weight_scale
that BitLinear divides by; BF16 embedding, lm_head and norms; the config with its nanotron keys
and its `quantization_config` twice, as the real repository has it. Random values: the point
is the size, not the text. Deterministic (seeded).
"""

import argparse
import json
import os
import shutil
import struct
import time

import numpy as np

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, VOCAB = 4096, 14336, 32, 32, 8, 128256
HEAD_DIM = HIDDEN // HEADS
REPO = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
TOKENIZER = os.path.join(REPO, "tests/fixtures/llama158/packed")

CONFIG = """{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "eos_token_id": [1, 2],
  "hidden_act": "silu",
  "hidden_size": %d,
  "initializer_range": 0.02,
  "intermediate_size": %d,
  "is_bitnet_config": true,
  "max_position_embeddings": 8192,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": %d,
  "num_hidden_layers": %d,
  "num_key_value_heads": %d,
  "pretraining_tp": 1,
  "quantization_config": {"modules_to_not_convert": null, "quant_method": "bitnet"},
  "rms_norm_eps": 1e-05,
  "rope_interleaved": false,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": %d,
  "quantization_config": {"quant_method": "bitnet"}
}
""" % (HIDDEN, FFN, HEADS, LAYERS, KV_HEADS, VOCAB)


def shapes():
    """(name, dtype, shape) in file order."""
    out = [("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN)), ("lm_head.weight", "BF16", (VOCAB, HIDDEN))]
    kv = KV_HEADS * HEAD_DIM
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", "BF16", (HIDDEN,)),
                (p + "post_attention_layernorm.weight", "BF16", (HIDDEN,))]
        for name, rows, cols in [("self_attn.q_proj", HIDDEN, HIDDEN), ("self_attn.k_proj", kv, HIDDEN),
                                 ("self_attn.v_proj", kv, HIDDEN), ("self_attn.o_proj", HIDDEN, HIDDEN),
                                 ("mlp.gate_proj", FFN, HIDDEN), ("mlp.up_proj", FFN, HIDDEN),
                                 ("mlp.down_proj", HIDDEN, FFN)]:
            out += [(p + name + ".weight", "U8", (rows // 4, cols)), (p + name + ".weight_scale", "BF16", (1,))]
    out.append(("model.norm.weight", "BF16", (HIDDEN,)))
    return out


def bf16(x):
    """float32 array → bf16 bytes (round to nearest even)."""
    u = x.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


# Every byte whose four 2-bit fields are codes 0, 1 or 2 (ternary −1, 0, +1; 3 is invalid).
VALID_BYTES = np.array([a | b << 2 | c << 4 | d << 6 for a in range(3) for b in range(3)
                        for c in range(3) for d in range(3)], dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (outside the repository)")
    args = ap.parse_args()
    out = os.path.realpath(args.out)
    if out.startswith(REPO + os.sep):
        ap.error("--out must be outside the repository (the checkpoint is ~3.9 GB)")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(8_000_000_000)
    tensors = shapes()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in tensors:
        n = int(np.prod(shape)) * (2 if dtype == "BF16" else 1)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    t0 = time.time()
    tmp = os.path.join(out, "model.safetensors.partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, dtype, shape in tensors:
            count = int(np.prod(shape))
            for start in range(0, count, 1 << 24):
                n = min(1 << 24, count - start)
                if dtype == "U8":
                    f.write(VALID_BYTES[rng.integers(0, len(VALID_BYTES), n)].tobytes())
                elif name.endswith("weight_scale"):
                    f.write(bf16(rng.uniform(1.0, 4.0, n)))
                elif "norm" in name:
                    f.write(bf16(1.0 + 0.2 * rng.standard_normal(n, dtype=np.float32)))
                else:
                    f.write(bf16(rng.standard_normal(n, dtype=np.float32)))
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(CONFIG)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, name), out)
    print(f"wrote {out}: {len(tensors)} tensors, {offset / 1e9:.2f} GB in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
