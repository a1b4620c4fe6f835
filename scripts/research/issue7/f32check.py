import os
os.environ["TORCHDYNAMO_DISABLE"] = "1"; os.environ["TRANSFORMERS_VERBOSITY"] = "error"
import torch
from transformers import LlamaForCausalLM
from transformers.integrations.bitnet import unpack_weights
q = LlamaForCausalLM.from_pretrained("/tmp/r7/packed", dtype=torch.float32, attn_implementation="eager")
dt = {}
for n, t in list(q.named_parameters()) + list(q.named_buffers()):
    dt.setdefault(str(t.dtype), []).append(n)
print({k: len(v) for k, v in dt.items()}, "e.g. non-f32:", [n for k, v in dt.items() if k != "torch.float32" for n in v][:4])
qp = q.model.layers[0].self_attn.q_proj
print("BitLinear.dtype attr:", qp.dtype, "weight_scale dtype:", qp.weight_scale.dtype)
ids = torch.tensor([[0, 5, 17, 200, 33, 9, 101]])
try:
    with torch.no_grad(): q(ids); print("f32 forward OK")
except Exception as e: print("f32 forward FAILS:", type(e).__name__, str(e)[:120])
# module-level check of the formula in f32
x = torch.randn(7, 128) * 3
with torch.no_grad(): y = qp(x)
s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
codes = (x * s).round().clamp(-128, 127)
t = unpack_weights(qp.weight, dtype=torch.float32)
acc = codes @ t.T
print("exact match y == acc/(ws*s):", torch.equal(y, acc / (qp.weight_scale * s)),
      "| acc*beta/s max rel diff:", ((acc * (1 / qp.weight_scale) / s - y).abs().max() / y.abs().max()).item())
