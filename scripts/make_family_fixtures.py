#!/usr/bin/env python3
"""Generate the non-2B-4T family fixtures: Llama-1.58 (HF1BitLLM / Falcon3) and 1bitLLM.

Purpose
-------
Besides microsoft's BitNetForCausalLM (tests/fixtures/{tiny,odd,wide}, written by
scripts/make_fixtures.py) tern reads two more 1.58-bit checkpoint families
(shared/docs/hf-checkpoints.md §3, docs/research/issue7-families.md):

* llama158/packed/ : HF1BitLLM Llama3-8B-1.58 / tiiuae Falcon3-*-1.58bit form.
  LlamaForCausalLM whose 7 projections are transformers `BitLinear`: U8 [out/4, in]
  (`pack_weights` layout) + `<proj>.weight_scale` = 1/beta (bf16, [1]) which BitLinear
  DIVIDES by. No sub-norms, SiLU, GQA, explicit head_dim 48 != hidden/heads, untied bf16
  lm_head. config.json is written by hand in the hub's old spelling (`torch_dtype`,
  top-level `rope_theta`) with `quantization_config` written TWICE, as in HF1BitLLM.
* onebit/fp16/ : 1bitLLM bitnet_b1_58-{large,3B} form. fp16 master weights quantised
  online (absmean weights, per-token absmax int8 activations), `architectures:
  ["BitnetForCausalLM"]` with `model_type: "llama"`, no quantization_config, MHA, SiLU,
  tied embeddings (no lm_head.weight), sub-norms named `self_attn.inner_attn_ln` /
  `mlp.ffn_layernorm`.

Golden data (same format as make_fixtures.py; see tests/fixtures/README.md):
* llama158: transformers `LlamaForCausalLM.from_pretrained(dir, dtype=float32, eager)` on the
  fixture folder itself. `beta.{t}` = 1/weight_scale (f32), `weight_scale.{t}` = stored value.
* onebit: 1bitLLM has no class in transformers. The SAME fp16 tensors, renamed to
  BitNet's `attn_sub_norm` / `ffn_sub_norm`, are loaded with `BitNetForCausalLM` (AutoBitLinear
  online, silu, tied, theta 10000) from a temporary folder (deleted afterwards). Module keys
  therefore use transformers' BitNet paths. `beta.{t}` = W.float().abs().mean() (1bitLLM name).
  Cross-check (assert): a hand-written 1bitLLM forward (utils_quant/modeling_bitnet, non-STE
  form) on the fixture's own tensors equals transformers' logits within 1e-4.
* llama158 is also checked against a hand-written Llama-1.58 forward (BitLinear divide).

How to run (from the repository root, ~11 s incl. imports; deterministic, byte-identical on re-run
with the same library versions; needs tests/fixtures/tokenizer from make_fixtures.py):

    python3 scripts/make_family_fixtures.py     # rewrites tests/fixtures/{llama158,onebit}
"""

import json
import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (sets TORCHDYNAMO_DISABLE, determinism, threads)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import (AutoConfig, AutoTokenizer, BitNetConfig, BitNetForCausalLM,  # noqa: E402
                          GenerationConfig, LlamaForCausalLM)
from transformers.integrations.bitnet import AutoBitLinear, BitLinear, pack_weights, unpack_weights  # noqa: E402

FIXTURES = mf.FIXTURES
TOK_DIR = os.path.join(FIXTURES, "tokenizer")
BOS, EOS, EOT = mf.BOS, mf.EOS, mf.EOT
V = mf.MODEL_VOCAB

LLAMA = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=48, rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=256)
ONEBIT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256)
# 1bitLLM sub-norm names <-> transformers BitNet names (same placement)
ONEBIT_RENAME = (("self_attn.inner_attn_ln.", "self_attn.attn_sub_norm."),
                 ("mlp.ffn_layernorm.", "mlp.ffn_sub_norm."))


def to_bitnet_name(n):
    for a, b in ONEBIT_RENAME:
        n = n.replace(a, b)
    return n


def to_onebit_name(n):
    for a, b in ONEBIT_RENAME:
        n = n.replace(b, a)
    return n


def dump_pairs(pairs):
    """JSON object text from (key, value) pairs; keys may repeat (json.dump cannot do that)."""
    lines = []
    for k, v in pairs:
        val = json.dumps(v, indent=2, ensure_ascii=False).replace("\n", "\n  ")
        lines.append(f"  {json.dumps(k)}: {val}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def save_generation_config(folder):
    GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, EOT]).save_pretrained(folder)


def layer_shapes(spec, sub_norms):
    H, I, L = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    d = spec.get("head_dim", H // spec["num_attention_heads"])
    q, kv = spec["num_attention_heads"] * d, spec["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (q, H),
            p + "self_attn.k_proj.weight": (kv, H),
            p + "self_attn.v_proj.weight": (kv, H),
            p + "self_attn.o_proj.weight": (H, q),
            p + "post_attention_layernorm.weight": (H,),
            p + "mlp.gate_proj.weight": (I, H),
            p + "mlp.up_proj.weight": (I, H),
            p + "mlp.down_proj.weight": (H, I),
        })
        if sub_norms:  # BitNet names here (init_tensor recognises "...norm.weight")
            shapes[p + "self_attn.attn_sub_norm.weight"] = (q,)
            shapes[p + "mlp.ffn_sub_norm.weight"] = (I,)
    shapes["model.norm.weight"] = (H,)
    return shapes


# --------------------------------------------------------------------------- shared golden code

def capture(model, prompts, tok, folder, proj_cls, norm_suffixes):
    """Forward hooks as in make_fixtures.golden_for, greedy decoding, tokenizer checks."""
    L = model.config.num_hidden_layers
    out, state, hooks = {}, {"p": None}, []

    def layer_hook(idx):
        def hook(mod, args, kwargs, output):
            p = state["p"]
            if p is None:
                return
            hs = args[0] if args else kwargs["hidden_states"]
            out[f"residual.{p}.{idx}"] = mf.f32(hs)
            o = output[0] if isinstance(output, tuple) else output
            out[f"residual.{p}.{L}" if idx == L - 1 else f"_next.{p}.{idx + 1}"] = mf.f32(o)
        return hook

    def module_hook(path):
        def hook(mod, args, kwargs, output):
            if state["p"] != 0:
                return
            x = args[0] if args else kwargs["hidden_states"]
            o = output[0] if isinstance(output, tuple) else output
            out[f"module.{path}.in"] = mf.f32(x)
            out[f"module.{path}.out"] = mf.f32(o)
        return hook

    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(layer_hook(i), with_kwargs=True))
    for path, mod in model.named_modules():
        if (isinstance(mod, proj_cls) or path.endswith(norm_suffixes) or path == "model.norm"
                or path.split(".")[-1] == "self_attn"):
            hooks.append(mod.register_forward_hook(module_hook(path), with_kwargs=True))

    with torch.no_grad():
        for p, ids in enumerate(prompts):
            state["p"] = p
            out[f"logits.{p}"] = mf.f32(model(torch.tensor([ids]), use_cache=False).logits)
        state["p"] = None
        for h in hooks:
            h.remove()
        for p in range(len(prompts)):
            for l in range(1, L):
                assert torch.equal(out.pop(f"_next.{p}.{l}"), out[f"residual.{p}.{l}"])
        assert torch.equal(out["module.model.norm.in"], out[f"residual.0.{L}"])
        for l in range(L):
            pre = f"module.model.layers.{l}"
            assert torch.equal(out[f"{pre}.self_attn.in"], out[f"{pre}.input_layernorm.out"])
            assert torch.equal(out[f"{pre}.self_attn.out"], out[f"{pre}.self_attn.o_proj.out"])
            assert torch.equal(out[f"{pre}.mlp.gate_proj.in"], out[f"{pre}.post_attention_layernorm.out"])

        greedy = []
        for p, ids in enumerate(prompts):
            inp = torch.tensor([ids])
            gen = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                                 max_new_tokens=mf.MAX_NEW_TOKENS, use_cache=True, pad_token_id=EOS)
            new = gen[0, len(ids):].tolist()
            full = model(gen, use_cache=False).logits[0]
            margins, agree = [], True
            for s in range(len(new)):
                row = full[len(ids) - 1 + s]
                top2 = torch.topk(row, 2).values
                margins.append(float(top2[0] - top2[1]))
                agree &= int(row.argmax()) == new[s]
            greedy.append({"prompt": p, "new_tokens": new, "stopped_on_eos": len(new) < mf.MAX_NEW_TOKENS,
                           "nocache_argmax_agrees": bool(agree), "nocache_top1_top2_margins": margins})

    hf_tok = AutoTokenizer.from_pretrained(folder)
    assert hf_tok(mf.TEXT_PROMPT)["input_ids"] == prompts[3]
    chat_text = hf_tok.apply_chat_template(mf.CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    chat_ids = tok.encode(chat_text, add_special_tokens=False).ids
    assert chat_ids == hf_tok(chat_text, add_special_tokens=False)["input_ids"]
    chat = {"messages": mf.CHAT_MESSAGES, "add_generation_prompt": True, "text": chat_text,
            "ids_without_added_specials": chat_ids}
    return out, greedy, chat


def write_golden(folder, out, prompts, tok, greedy, chat, summary, loaded, naming):
    gdir = os.path.join(folder, "golden")
    os.makedirs(gdir, exist_ok=True)
    names = sorted(out)
    save_file({k: out[k].contiguous() for k in names}, os.path.join(gdir, "golden.safetensors"),
              metadata={"format": "pt"})
    golden = {
        **mf.versions(),
        "generated_by": "scripts/make_family_fixtures.py",
        "compute": {"dtype": "float32", "attn_implementation": "eager", "TORCHDYNAMO_DISABLE": "1",
                    "torch_threads": torch.get_num_threads(),
                    "loaded_param_dtypes_before_cast": loaded},
        "prompts": prompts,
        "text_prompt": {"text": mf.TEXT_PROMPT, "ids": prompts[3], "prompt_index": 3,
                        "decoded": tok.decode(prompts[3], skip_special_tokens=False)},
        "chat_prompt": chat,
        "greedy": greedy,
        "greedy_settings": {"do_sample": False, "max_new_tokens": mf.MAX_NEW_TOKENS, "use_cache": True,
                            "eos_token_id": [EOS, EOT],
                            "note": "generation stops early on any eos id; margins are top1-top2 of a "
                                    "no-cache f32 forward over prompt+new tokens"},
        "config": summary,
        "tensor_naming": naming,
        "tensor_names": names,
    }
    mf.write_json(os.path.join(gdir, "golden.json"), golden)


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def rope_cos_sin(T, d, theta):
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    f = torch.arange(T).float()[:, None] * inv
    e = torch.cat((f, f), -1)
    return e.cos(), e.sin()


# --------------------------------------------------------------------------- llama158

def llama_config_text(s):
    pairs = [
        ("architectures", ["LlamaForCausalLM"]),
        ("attention_bias", False),
        ("attention_dropout", 0.0),
        ("bos_token_id", BOS),
        ("eos_token_id", [EOS, EOT]),
        ("head_dim", s["head_dim"]),
        ("hidden_act", "silu"),
        ("hidden_size", s["hidden_size"]),
        ("initializer_range", 0.02),
        ("intermediate_size", s["intermediate_size"]),
        ("is_bitnet_config", True),
        ("max_position_embeddings", s["max_position_embeddings"]),
        ("mlp_bias", False),
        ("model_type", "llama"),
        ("num_attention_heads", s["num_attention_heads"]),
        ("num_hidden_layers", s["num_hidden_layers"]),
        ("num_key_value_heads", s["num_key_value_heads"]),
        ("pretraining_tp", 1),
        ("quantization_config", {"modules_to_not_convert": None, "quant_method": "bitnet"}),
        ("rms_norm_eps", s["rms_norm_eps"]),
        ("rope_interleaved", False),
        ("rope_scaling", None),
        ("rope_theta", s["rope_theta"]),
        ("tie_word_embeddings", False),
        ("torch_dtype", "bfloat16"),
        ("use_cache", True),
        ("vocab_size", V),
        ("quantization_config", {"quant_method": "bitnet"}),
    ]
    return dump_pairs(pairs)


def llama_hand_forward(S, s, ids):
    """Llama-1.58 forward by hand (f32): BitLinear y = (q @ t^T) / (weight_scale * s_x)."""
    nh, nkv, d, L, eps = (s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"],
                          s["num_hidden_layers"], s["rms_norm_eps"])

    def bitlinear(x, name):
        sx = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        q = (x * sx).round().clamp(-128, 127)
        t = unpack_weights(S[name + ".weight"], dtype=torch.float32)
        return F.linear(q, t) / (S[name + ".weight_scale"].float() * sx)

    T = len(ids)
    cos, sin = rope_cos_sin(T, d, s["rope_theta"])
    x = S["model.embed_tokens.weight"].float()[torch.tensor(ids)]
    mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, S[p + "input_layernorm.weight"].float(), eps)
        q = bitlinear(h, p + "self_attn.q_proj").view(T, nh, d).transpose(0, 1)
        k = bitlinear(h, p + "self_attn.k_proj").view(T, nkv, d).transpose(0, 1)
        v = bitlinear(h, p + "self_attn.v_proj").view(T, nkv, d).transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5 + mask, -1) @ v
        x = x + bitlinear(a.transpose(0, 1).reshape(T, nh * d), p + "self_attn.o_proj")
        h = rms(x, S[p + "post_attention_layernorm.weight"].float(), eps)
        u = F.silu(bitlinear(h, p + "mlp.gate_proj")) * bitlinear(h, p + "mlp.up_proj")
        x = x + bitlinear(u, p + "mlp.down_proj")
    return rms(x, S["model.norm.weight"].float(), eps) @ S["lm_head.weight"].float().T


def build_llama158(prompts, tok):
    t0 = time.time()
    fixture, s = "llama158", LLAMA
    folder = os.path.join(FIXTURES, fixture, "packed")
    os.makedirs(folder)
    shapes = layer_shapes(s, sub_norms=False)
    shapes["lm_head.weight"] = (V, s["hidden_size"])
    tensors, codes = {}, {}
    for name in sorted(shapes):
        w = mf.init_tensor(fixture, name, shapes[name]).to(torch.bfloat16)
        if mf.is_proj(name):
            beta, t = mf.ternarize(w)
            packed = pack_weights(t.clone())  # adds 1 in place: pass a copy
            assert torch.equal(packed, mf.pack_manual(t))
            assert tuple(packed.shape) == (t.shape[0] // 4, t.shape[1])
            tensors[name] = packed.contiguous()
            tensors[name[: -len("weight")] + "weight_scale"] = (1.0 / beta).to(torch.bfloat16).reshape(1)
            codes[name] = t
        else:
            tensors[name] = w.contiguous()
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    write_text(os.path.join(folder, "config.json"), llama_config_text(s))
    save_generation_config(folder)
    mf.copy_tokenizer(TOK_DIR, folder)

    # the hand-written config: duplicated key, json keeps the last one
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        text = f.read()
    assert text.count('"quantization_config"') == 2
    assert "linear_class" not in text and "quantization_mode" not in text
    assert json.loads(text)["quantization_config"] == {"quant_method": "bitnet"}

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    c = model.config
    assert (c.head_dim, c.num_key_value_heads, c.hidden_act, c.tie_word_embeddings) == (48, 2, "silu", False)
    assert c.rope_parameters["rope_theta"] == s["rope_theta"] and c.rms_norm_eps == s["rms_norm_eps"]
    loaded = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        loaded.setdefault(str(t.dtype).replace("torch.", ""), 0)
        loaded[str(t.dtype).replace("torch.", "")] += 1
    for path, mod in model.named_modules():
        if path.endswith(mf.PROJ_SUFFIXES):
            assert isinstance(mod, BitLinear) and mod.dtype == torch.float32, (path, type(mod))
            assert mod.weight.dtype == torch.uint8 and mod.weight_scale.dtype == torch.float32
            assert torch.equal(unpack_weights(mod.weight, dtype=torch.float32), codes[path + ".weight"].float())
            assert torch.equal(mod.weight_scale, tensors[path + ".weight_scale"].float())
    assert type(model.lm_head) is torch.nn.Linear
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert all(p.dtype == torch.float32 for p in model.parameters())

    out, greedy, chat = capture(model, prompts, tok, folder, BitLinear,
                                ("input_layernorm", "post_attention_layernorm"))
    for l in range(s["num_hidden_layers"]):
        pre = f"module.model.layers.{l}"
        assert torch.equal(out[f"{pre}.mlp.down_proj.in"],
                           F.silu(out[f"{pre}.mlp.gate_proj.out"]) * out[f"{pre}.mlp.up_proj.out"])
    for name in codes:
        ws = tensors[name[: -len("weight")] + "weight_scale"].float().reshape(1)
        out[f"weight_scale.{name}"] = ws.clone()
        out[f"beta.{name}"] = (1.0 / ws).clone()
    # independent check: hand-written forward on the stored tensors
    with torch.no_grad():
        worst = max((llama_hand_forward(tensors, s, ids) - out[f"logits.{p}"]).abs().max().item()
                    for p, ids in enumerate(prompts))
    assert worst <= 1e-4, worst

    summary = {
        "fixture": fixture, "form": "packed", "family": "Llama-1.58 (HF1BitLLM Llama3-8B-1.58, Falcon3-1.58bit)",
        "architecture": "LlamaForCausalLM", "model_type": "llama",
        "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_hidden_layers"], "num_attention_heads": s["num_attention_heads"],
        "num_key_value_heads": s["num_key_value_heads"], "head_dim": s["head_dim"],
        "vocab_size": V, "tokenizer_vocab_size": mf.TOKENIZER_VOCAB, "hidden_act": "silu",
        "rms_norm_eps": s["rms_norm_eps"], "rope_theta": s["rope_theta"],
        "max_position_embeddings": s["max_position_embeddings"], "tie_word_embeddings": False,
        "bos_token_id": BOS, "eos_token_id": [EOS, EOT], "generation_eos_token_ids": [EOS, EOT],
        "linear_class": "bitlinear (absent from config.json): y = (codes_x @ t^T) / (weight_scale * s_x)",
        "weight_scale": "1/beta, bf16 [1], divided",
        "sub_norms": None,
        "config_spelling": "old (torch_dtype, rope_theta); quantization_config written twice, json keeps the last",
        "hand_forward_max_abs_logit_diff": worst,
    }
    naming = {
        "logits.{p}": "f32 [T, vocab]",
        "residual.{p}.{l}": "f32 [T, H]; input of decoder layer l, l=L is last layer output before model.norm",
        "module.{path}.in|out": "f32, prompt 0 only; self_attn .out = first element of its output tuple "
                                "(after o_proj); no sub-norms in this family",
        "beta.{tensor}": "f32 [1]; 1/weight_scale (weight_scale upcast to f32 first)",
        "weight_scale.{tensor}": "f32 [1]; the stored bf16 weight_scale (= 1/beta rounded to bf16)",
    }
    write_golden(folder, out, prompts, tok, greedy, chat, summary, loaded, naming)
    print(f"  llama158/packed: {len(out)} golden tensors, hand forward diff {worst:.2e}, "
          f"greedy {[g['new_tokens'] for g in greedy]} ({time.time() - t0:.1f}s)")
    return folder


# --------------------------------------------------------------------------- onebit

def onebit_config_text(s):
    pairs = [
        ("architectures", ["BitnetForCausalLM"]),
        ("attention_bias", False),
        ("attention_dropout", 0.0),
        ("bos_token_id", BOS),
        ("eos_token_id", EOS),
        ("hidden_act", "silu"),
        ("hidden_size", s["hidden_size"]),
        ("initializer_range", 0.02),
        ("input_bits", 8),
        ("intermediate_size", s["intermediate_size"]),
        ("max_position_embeddings", s["max_position_embeddings"]),
        ("model_type", "llama"),
        ("num_attention_heads", s["num_attention_heads"]),
        ("num_hidden_layers", s["num_hidden_layers"]),
        ("num_key_value_heads", s["num_key_value_heads"]),
        ("pretraining_tp", 1),
        ("rms_norm_eps", s["rms_norm_eps"]),
        ("rope_scaling", None),
        ("rope_theta", s["rope_theta"]),
        ("tie_word_embeddings", True),
        ("torch_dtype", "float16"),
        ("use_cache", True),
        ("vocab_size", V),
        ("weight_bits", 1),
    ]
    return dump_pairs(pairs)


def onebit_hand_forward(W, s, ids, ste=False, mul_scale=False):
    """1bitLLM utils_quant.BitLinear / modeling_bitnet forward (f32), 1bitLLM tensor names.

    ste: the original's straight-through form x + (q(x) - x), W + (q(W) - W) (not exactly ternary).
    mul_scale: transformers' `* d**-0.5` instead of the original's `/ math.sqrt(d)`.
    """
    H, NH, L, eps = s["hidden_size"], s["num_attention_heads"], s["num_hidden_layers"], s["rms_norm_eps"]
    d = H // NH

    def weight_quant(w):
        sc = 1 / w.abs().mean().clamp(min=1e-5)
        return (w * sc).round().clamp(-1, 1) / sc

    def act_quant(x):
        sc = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        return (x * sc).round().clamp(-128, 127) / sc

    def bitlinear(x, name):
        w = W[name + ".weight"]
        if ste:
            return F.linear(x + (act_quant(x) - x), w + (weight_quant(w) - w))
        return F.linear(act_quant(x), weight_quant(w))

    T = len(ids)
    cos, sin = rope_cos_sin(T, d, s["rope_theta"])
    x = W["model.embed_tokens.weight"][torch.tensor(ids)]
    mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        q, k, v = (bitlinear(h, p + f"self_attn.{n}_proj").view(T, NH, d).transpose(0, 1) for n in "qkv")
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        sc = q @ k.transpose(1, 2)
        sc = sc * d ** -0.5 if mul_scale else sc / math.sqrt(d)
        a = torch.softmax(sc + mask, -1, dtype=torch.float32) @ v
        a = rms(a.transpose(0, 1).reshape(T, H), W[p + "self_attn.inner_attn_ln.weight"], eps)
        x = x + bitlinear(a, p + "self_attn.o_proj")
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        u = F.silu(bitlinear(h, p + "mlp.gate_proj")) * bitlinear(h, p + "mlp.up_proj")
        x = x + bitlinear(rms(u, W[p + "mlp.ffn_layernorm.weight"], eps), p + "mlp.down_proj")
    return rms(x, W["model.norm.weight"], eps) @ W["model.embed_tokens.weight"].T  # tied, unquantised


def build_onebit(prompts, tok):
    t0 = time.time()
    fixture, s = "onebit", ONEBIT
    folder = os.path.join(FIXTURES, fixture, "fp16")
    os.makedirs(folder)
    shapes = layer_shapes(s, sub_norms=True)  # BitNet names
    bitnet_sd = {n: mf.init_tensor(fixture, n, shapes[n]).to(torch.float16).contiguous() for n in sorted(shapes)}
    onebit_sd = {to_onebit_name(n): w for n, w in bitnet_sd.items()}
    assert all(to_bitnet_name(n) in bitnet_sd for n in onebit_sd)
    assert sum(".inner_attn_ln." in n or ".ffn_layernorm." in n for n in onebit_sd) == 2 * s["num_hidden_layers"]
    save_file(onebit_sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    write_text(os.path.join(folder, "config.json"), onebit_config_text(s))
    save_generation_config(folder)
    mf.copy_tokenizer(TOK_DIR, folder)

    # transformers reads the 1bitLLM config.json as a plain LlamaConfig
    lc = AutoConfig.from_pretrained(folder)
    assert type(lc).__name__ == "LlamaConfig", type(lc)
    assert lc.rope_parameters["rope_theta"] == s["rope_theta"] and lc.tie_word_embeddings is True
    assert lc.hidden_act == "silu" and lc.num_key_value_heads == s["num_attention_heads"]
    # ... and LlamaForCausalLM (no sub-norms) would silently drop them: record what it reports
    _, info = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    llama_unexpected = sorted(info["unexpected_keys"])
    assert llama_unexpected == sorted(n for n in onebit_sd if ".inner_attn_ln." in n or ".ffn_layernorm." in n), info
    assert not info["missing_keys"], info

    with tempfile.TemporaryDirectory(prefix="tern-onebit-bitnet-") as tmp:
        cfg = BitNetConfig(
            vocab_size=V, hidden_act="silu", bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None,
            tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": s["rope_theta"]},
            quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear",
                                 "quantization_mode": "online"},
            **{k: v for k, v in s.items() if k != "rope_theta"})
        cfg.dtype = torch.float16
        cfg.architectures = ["BitNetForCausalLM"]
        cfg.save_pretrained(tmp)
        save_file(bitnet_sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        save_generation_config(tmp)
        model, info = BitNetForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager",
                                                        output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        model.eval()
    loaded = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        loaded.setdefault(str(t.dtype).replace("torch.", ""), 0)
        loaded[str(t.dtype).replace("torch.", "")] += 1
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for path, mod in model.named_modules():
        if path.endswith(mf.PROJ_SUFFIXES):
            assert isinstance(mod, AutoBitLinear) and mod.online_quant, (path, type(mod))
            assert torch.equal(mod.weight.detach(), bitnet_sd[path + ".weight"].float())
    assert not isinstance(model.lm_head, AutoBitLinear)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), bitnet_sd[n].float()), n

    out, greedy, chat = capture(model, prompts, tok, folder, AutoBitLinear, mf.NORM_SUFFIXES)
    for l in range(s["num_hidden_layers"]):
        pre = f"module.model.layers.{l}"
        assert torch.equal(out[f"{pre}.self_attn.o_proj.in"], out[f"{pre}.self_attn.attn_sub_norm.out"])
        assert torch.equal(out[f"{pre}.mlp.down_proj.in"], out[f"{pre}.mlp.ffn_sub_norm.out"])
        assert torch.equal(out[f"{pre}.mlp.ffn_sub_norm.in"],
                           F.silu(out[f"{pre}.mlp.gate_proj.out"]) * out[f"{pre}.mlp.up_proj.out"])
    for n, w in onebit_sd.items():
        if mf.is_proj(n):
            out[f"beta.{n}"] = w.float().abs().mean().reshape(1).clone()

    # cross-check against the 1bitLLM forward written by hand, on the fixture's own tensors
    W = {n: w.float() for n, w in load_file(os.path.join(folder, "model.safetensors")).items()}
    with torch.no_grad():
        worst = max((onebit_hand_forward(W, s, ids) - out[f"logits.{p}"]).abs().max().item()
                    for p, ids in enumerate(prompts))
        ste = max((onebit_hand_forward(W, s, ids, ste=True) - out[f"logits.{p}"]).abs().max().item()
                  for p, ids in enumerate(prompts))
        mul = max((onebit_hand_forward(W, s, ids, mul_scale=True) - out[f"logits.{p}"]).abs().max().item()
                  for p, ids in enumerate(prompts))
    assert worst <= 1e-4, worst  # 1bitLLM's own arithmetic (/ sqrt(d)): off by ~1 ulp in the scores
    assert mul <= 1e-5, mul  # with transformers' * d**-0.5 (observed: exactly 0)

    summary = {
        "fixture": fixture, "form": "fp16", "family": "1bitLLM bitnet_b1_58-{large,3B}",
        "architecture": "BitnetForCausalLM", "model_type": "llama",
        "golden_computed_with": "transformers BitNetForCausalLM (AutoBitLinear online, silu, tied) on the same "
                                "tensors renamed inner_attn_ln->attn_sub_norm, ffn_layernorm->ffn_sub_norm",
        "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_hidden_layers"], "num_attention_heads": s["num_attention_heads"],
        "num_key_value_heads": s["num_key_value_heads"], "head_dim": s["hidden_size"] // s["num_attention_heads"],
        "vocab_size": V, "tokenizer_vocab_size": mf.TOKENIZER_VOCAB, "hidden_act": "silu",
        "rms_norm_eps": s["rms_norm_eps"], "rope_theta": s["rope_theta"],
        "max_position_embeddings": s["max_position_embeddings"], "tie_word_embeddings": True,
        "bos_token_id": BOS, "eos_token_id": EOS, "generation_eos_token_ids": [EOS, EOT],
        "quantization": "online: absmean ternary weights (f32 beta), per-token absmax int8 activations; "
                        "no quantization_config, weight_bits 1, input_bits 8",
        "sub_norms": {"self_attn.inner_attn_ln": "self_attn.attn_sub_norm [H], before o_proj",
                      "mlp.ffn_layernorm": "mlp.ffn_sub_norm [I], before down_proj"},
        "config_spelling": "old (torch_dtype, rope_theta)",
        "hand_forward_max_abs_logit_diff": worst,
        "hand_forward_mul_scale_max_abs_logit_diff": mul,
        "hand_forward_ste_form_max_abs_logit_diff": ste,
        "hand_forward_note": "1bitLLM non-STE forward; it scales scores by / sqrt(d), transformers by * d**-0.5 "
                             "(1-ulp differences); the STE form (W + (q(W) - W)) is not exactly ternary and "
                             "flips some activation codes",
        "llama_for_causal_lm_unexpected_keys": llama_unexpected,
    }
    naming = {
        "logits.{p}": "f32 [T, vocab]",
        "residual.{p}.{l}": "f32 [T, H]; input of decoder layer l, l=L is last layer output before model.norm",
        "module.{path}.in|out": "f32, prompt 0 only; transformers BitNet module paths: "
                                "self_attn.attn_sub_norm = 1bitLLM self_attn.inner_attn_ln, "
                                "mlp.ffn_sub_norm = 1bitLLM mlp.ffn_layernorm",
        "beta.{tensor}": "f32 [1]; W.float().abs().mean() of the fp16 master (1bitLLM tensor name)",
    }
    write_golden(folder, out, prompts, tok, greedy, chat, summary, loaded, naming)
    print(f"  onebit/fp16: {len(out)} golden tensors, hand forward diff {worst:.2e} "
          f"(* d**-0.5: {mul:.2e}, STE form {ste:.2e}), "
          f"greedy {[g['new_tokens'] for g in greedy]} ({time.time() - t0:.1f}s)")
    return folder


def main():
    t_start = time.time()
    print("versions:", mf.versions())
    tok = Tokenizer.from_file(os.path.join(TOK_DIR, "tokenizer.json"))
    prompts = mf.make_prompts(tok)
    for fixture in ("llama158", "onebit"):
        root = os.path.join(FIXTURES, fixture)
        if os.path.isdir(root):
            shutil.rmtree(root)
    build_llama158(prompts, tok)
    build_onebit(prompts, tok)
    print(f"done in {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
