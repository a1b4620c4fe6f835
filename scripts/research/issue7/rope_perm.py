# bitnet.cpp / llama.cpp LlamaModel.permute on q/k rows + interleaved ("NORM") RoPE
#   == transformers' half-split (rotate_half, "NEOX") RoPE on the original rows.
import torch
torch.manual_seed(0)
H, nh, nkv, d, T, theta = 64, 4, 2, 16, 5, 10000.0
def permute(w, n_head, n_head_kv):      # verbatim logic of convert-hf-to-gguf-bitnet.py LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv: n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d); ang = torch.arange(T).float()[:, None] * inv   # [T, d/2]
def rope_half(x):        # x [T, n, d]; pairs (i, i+d/2)
    c, s = torch.cat((ang, ang), -1).cos()[:, None], torch.cat((ang, ang), -1).sin()[:, None]
    return x * c + torch.cat((-x[..., d // 2:], x[..., :d // 2]), -1) * s
def rope_interleaved(x): # pairs (2i, 2i+1), angle pos*inv[i]  (ggml rope mode 0 / LLAMA_ROPE_TYPE_NORM)
    a, b = x[..., 0::2], x[..., 1::2]; c, s = ang.cos()[:, None], ang.sin()[:, None]
    return torch.stack((a * c - b * s, a * s + b * c), -1).flatten(-2)
Wq, Wk, x = torch.randn(nh * d, H), torch.randn(nkv * d, H), torch.randn(T, H)
q_h = rope_half((x @ Wq.T).view(T, nh, d)); k_h = rope_half((x @ Wk.T).view(T, nkv, d))
q_i = rope_interleaved((x @ permute(Wq, nh, nh).T).view(T, nh, d)); k_i = rope_interleaved((x @ permute(Wk, nh, nkv).T).view(T, nkv, d))
perm = permute(torch.arange(d).float()[:, None], 1, 1).flatten().long()   # permuted row p holds original row perm[p]
print("per-head row map (permuted <- original):", perm.tolist())
print("q_i == q_h[..., perm]:", torch.allclose(q_i, q_h[..., perm], atol=1e-5), "| k likewise:", torch.allclose(k_i, k_h[..., perm], atol=1e-5))
rep = nh // nkv
s_h = torch.einsum("thd,shd->hts", q_h, k_h.repeat_interleave(rep, 1)); s_i = torch.einsum("thd,shd->hts", q_i, k_i.repeat_interleave(rep, 1))
print("attention scores equal:", torch.allclose(s_h, s_i, atol=1e-4))
inv_perm = torch.argsort(perm)
print("un-permute rows restores original:", torch.equal(permute(Wq, nh, nh).view(nh, d, H)[:, inv_perm].reshape(nh * d, H), Wq))
