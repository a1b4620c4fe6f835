# Hand-written Llama-1.58 forward (no sub-norms, SwiGLU, GQA, explicit head_dim, BitLinear divide) vs transformers, f32.
import os; os.environ["TORCHDYNAMO_DISABLE"] = "1"; os.environ["TRANSFORMERS_VERBOSITY"] = "error"
import torch, torch.nn.functional as F
from safetensors.torch import load_file
from transformers import LlamaForCausalLM
from transformers.integrations.bitnet import unpack_weights
m = LlamaForCausalLM.from_pretrained("/tmp/r7/packed", dtype=torch.float32, attn_implementation="eager").eval()
c = m.config; S = {k: (v if v.dtype == torch.uint8 else v.float()) for k, v in load_file("/tmp/r7/packed/model.safetensors").items()}
nh, nkv, d, L = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_hidden_layers
def bitlinear(x, name):      # transformers BitLinear order: F.linear(q, t) / (weight_scale * s)
    s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5); q = (x * s).round().clamp(-128, 127)
    return F.linear(q, unpack_weights(S[name + ".weight"], torch.float32)) / (S[name + ".weight_scale"] * s)
def rms(x, w): return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps))
ids = torch.tensor([0, 5, 17, 200, 33, 9, 101]); T = len(ids)
inv = 1.0 / c.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2).float() / d)
e = torch.arange(T).float()[:, None] * inv; e = torch.cat((e, e), -1); cos, sin = e.cos()[None], e.sin()[None]
rot = lambda x: torch.cat((-x[..., d // 2:], x[..., :d // 2]), -1)
x = S["model.embed_tokens.weight"][ids]; mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
for l in range(L):
    p = f"model.layers.{l}."; h = rms(x, S[p + "input_layernorm.weight"])
    q = bitlinear(h, p + "self_attn.q_proj").view(T, nh, d).transpose(0, 1)
    k = bitlinear(h, p + "self_attn.k_proj").view(T, nkv, d).transpose(0, 1)
    v = bitlinear(h, p + "self_attn.v_proj").view(T, nkv, d).transpose(0, 1)
    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
    a = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5 + mask, -1) @ v
    x = x + bitlinear(a.transpose(0, 1).reshape(T, nh * d), p + "self_attn.o_proj")          # no attn sub-norm
    h = rms(x, S[p + "post_attention_layernorm.weight"])
    x = x + bitlinear(F.silu(bitlinear(h, p + "mlp.gate_proj")) * bitlinear(h, p + "mlp.up_proj"), p + "mlp.down_proj")  # no ffn sub-norm
logits = rms(x, S["model.norm.weight"]) @ S["lm_head.weight"].T
with torch.no_grad(): ref = m(ids[None]).logits[0]
print("max |hand - transformers| =", (logits - ref).abs().max().item(), " max|logit| =", ref.abs().max().item())
