# 1bitLLM-style tiny checkpoint (fp16 masters, inner_attn_ln / ffn_layernorm names) + golden via
# transformers' BitNetForCausalLM (AutoBitLinear online, silu), checked against a hand-written
# re-implementation of 1bitLLM's modeling_bitnet.py / utils_quant.py forward (STE form, / sqrt(d)).
import os, json, math
os.environ["TORCHDYNAMO_DISABLE"] = "1"; os.environ["TRANSFORMERS_VERBOSITY"] = "error"
import torch, torch.nn.functional as F
from safetensors.torch import save_file, load_file
from transformers import BitNetConfig, BitNetForCausalLM
torch.manual_seed(0)
H, I, L, NH, V = 96 * 2, 256, 2, 2, 256          # head_dim 96 like bitnet_b1_58-large
cfg = BitNetConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                   num_attention_heads=NH, num_key_value_heads=NH, hidden_act="silu", rms_norm_eps=1e-5,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
                   max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                   quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear",
                                        "quantization_mode": "online"})
m = BitNetForCausalLM(cfg)
sd = {}
for n, p in m.named_parameters():
    w = torch.randn(p.shape) * (1.0 if "proj" in n or "embed" in n else 0.2) + (1.0 if "norm" in n else 0.0)
    sd[n] = w.to(torch.float16)                            # 1bitLLM stores fp16 masters
ren = lambda n: n.replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln").replace("mlp.ffn_sub_norm", "mlp.ffn_layernorm")
os.makedirs("/tmp/r7/onebit/hf", exist_ok=True); os.makedirs("/tmp/r7/onebit/bitnet", exist_ok=True)
save_file({ren(k): v for k, v in sd.items()}, "/tmp/r7/onebit/hf/model.safetensors", metadata={"format": "pt"})
save_file(sd, "/tmp/r7/onebit/bitnet/model.safetensors", metadata={"format": "pt"})
cfg.dtype = torch.float16; cfg.save_pretrained("/tmp/r7/onebit/bitnet")
print("1bitLLM-style names:", [k for k in load_file("/tmp/r7/onebit/hf/model.safetensors") if k.startswith("model.layers.0.")])
g = BitNetForCausalLM.from_pretrained("/tmp/r7/onebit/bitnet", dtype=torch.float32, attn_implementation="eager").eval()
print("loaded dtypes:", sorted({str(p.dtype) for p in g.parameters()}), "| q_proj:", type(g.model.layers[0].self_attn.q_proj).__name__)
ids = torch.tensor([[1, 7, 99, 200, 3, 45, 12, 250, 8]])
with torch.no_grad(): ref = g(ids).logits[0]

# ---- hand-written 1bitLLM forward (f32), from utils_quant.py / modeling_bitnet.py ----
W = {ren(k): v.float() for k, v in sd.items()}
def weight_quant(w): s = 1 / w.abs().mean().clamp(min=1e-5); return (w * s).round().clamp(-1, 1) / s
def act_quant(x): s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5); return (x * s).round().clamp(-128, 127) / s
def bitlinear(x, w, ste=True):
    if ste: return F.linear(x + (act_quant(x) - x), w + (weight_quant(w) - w))   # .detach() is a no-op numerically
    return F.linear(act_quant(x), weight_quant(w))
def rms(x, w, eps=1e-5): return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
def rot(x): return torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), -1)
def onebit_forward(ids, ste=True, div_sqrt=True):
    T, d = ids.shape[1], H // NH
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    f = torch.arange(T).float()[:, None] * inv; emb = torch.cat((f, f), -1); cos, sin = emb.cos(), emb.sin()
    x = W["model.embed_tokens.weight"][ids[0]]
    mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
    for l in range(L):
        p = f"model.layers.{l}."; h = rms(x, W[p + "input_layernorm.weight"])
        q, k, v = (bitlinear(h, W[p + f"self_attn.{n}_proj.weight"], ste).view(T, NH, d).transpose(0, 1) for n in "qkv")
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        a = q @ k.transpose(1, 2); a = a / math.sqrt(d) if div_sqrt else a * d ** -0.5
        a = torch.softmax(a + mask, -1, dtype=torch.float32) @ v
        a = rms(a.transpose(0, 1).reshape(T, H), W[p + "self_attn.inner_attn_ln.weight"])
        x = x + bitlinear(a, W[p + "self_attn.o_proj.weight"], ste)
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        u = F.silu(bitlinear(h, W[p + "mlp.gate_proj.weight"], ste)) * bitlinear(h, W[p + "mlp.up_proj.weight"], ste)
        x = x + bitlinear(rms(u, W[p + "mlp.ffn_layernorm.weight"]), W[p + "mlp.down_proj.weight"], ste)
    return rms(x, W["model.norm.weight"]) @ W["model.embed_tokens.weight"].T   # tied lm_head, not quantised
with torch.no_grad():
    for ste, ds in [(False, False), (False, True), (True, True)]:
        out = onebit_forward(ids, ste, ds)
        print(f"ste={ste!s:5} div_sqrt={ds!s:5}: max|logit diff| vs transformers = {(out - ref).abs().max().item():.3e}  (max|logit| {ref.abs().max().item():.1f})")
# STE weight expression vs plain dequantised weight, element-wise
n_diff = tot = 0
for k, w in W.items():
    if k.endswith("proj.weight"):
        wq = weight_quant(w); n_diff += (w + (wq - w) != wq).sum().item(); tot += w.numel()
print(f"STE weight w+(wq-w) != wq on {n_diff}/{tot} elements")
x = torch.randn(4096, 512) * 3; aq = act_quant(x)
print("STE activation x+(aq-x) != aq on", (x + (aq - x) != aq).sum().item(), "/", x.numel())
