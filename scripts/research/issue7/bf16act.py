import torch
# every positive normal bf16 value as the row absmax m; BitLinear computes in bf16: s = 127/m, then (x*s).round()
bits = torch.arange(0x0080, 0x7F80, dtype=torch.int32).to(torch.int16)
m = bits.view(torch.bfloat16)
m = m[m >= 1e-5]
s = 127 / m                                   # bf16
p = (-m) * s                                  # bf16 product for x = -absmax
r = p.round()
print("n absmax values:", m.numel(), "| product values:", sorted(set(p.float().tolist())),
      "| codes for -absmax:", sorted(set(r.clamp(-128, 127).float().tolist())))
# f32 path (AutoBitLinear / BitLinear in f32)
mf = m.float(); pf = (-mf) * (127 / mf)
print("f32 codes for -absmax:", sorted(set(pf.round().clamp(-128, 127).tolist())))
# double rounding in bf16: compare codes of random rows computed in bf16 vs f32
g = torch.Generator().manual_seed(0)
x = (torch.randn(1000, 512, generator=g) * 2).to(torch.bfloat16)
cb = (x * (127 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5))).round().clamp(-128, 127).float()
xf = x.float(); cf = (xf * (127 / xf.abs().amax(-1, keepdim=True))).round().clamp(-128, 127)
print("bf16 vs f32 activation codes differ on", (cb != cf).float().mean().item() * 100, "% of entries")
