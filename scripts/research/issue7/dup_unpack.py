import os, json, shutil
os.environ["TORCHDYNAMO_DISABLE"] = "1"; os.environ["TRANSFORMERS_VERBOSITY"] = "error"
import torch
from transformers import LlamaForCausalLM
from transformers.integrations.bitnet import pack_weights, unpack_weights
# (a) config.json with quantization_config written twice, as in HF1BitLLM/Llama3-8B-1.58-100B-tokens
shutil.copytree("/tmp/r7/packed", "/tmp/r7/dup", dirs_exist_ok=True)
c = json.load(open("/tmp/r7/packed/config.json")); c.pop("quantization_config")
txt = json.dumps(c, indent=2)[:-2] + ',\n  "quantization_config": {"modules_to_not_convert": null, "quant_method": "bitnet"},\n  "quantization_config": {"quant_method": "bitnet"}\n}'
open("/tmp/r7/dup/config.json", "w").write(txt)
print("json.load keeps:", json.load(open("/tmp/r7/dup/config.json"))["quantization_config"])
m = LlamaForCausalLM.from_pretrained("/tmp/r7/dup", dtype=torch.float32)
print("loads:", type(m.model.layers[0].mlp.down_proj).__name__, "lm_head:", type(m.lm_head).__name__)
# (b) bitnet.cpp LlamaModel.write_tensors unpacking (shift [0,2,4,6] on a new leading dim) == transformers unpack_weights
t = torch.randint(-1, 2, (24, 10), dtype=torch.int8); p = pack_weights(t.clone())
shift = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(4, 1, 1)
u = ((p.unsqueeze(0).expand(4, *p.shape) >> shift) & 3).float().sub(1).reshape(p.shape[0] * 4, p.shape[1])
print("bitnet.cpp unpack == transformers unpack == original:", torch.equal(u, unpack_weights(p, torch.float32)) and torch.equal(u, t.float()))
