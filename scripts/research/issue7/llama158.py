import os, json
os.environ["TORCHDYNAMO_DISABLE"] = "1"; os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["TRANSFORMERS_VERBOSITY"] = "error"
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.bitnet import BitLinear, pack_weights, unpack_weights
torch.manual_seed(0)
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=48,   # explicit head_dim != 128/4
                  hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000042.0},
                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
m = LlamaForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained("/tmp/r7/master")                       # plain bf16 llama
sd = load_file("/tmp/r7/master/model.safetensors"); out = {}
for n, w in sd.items():
    if n.endswith(".weight") and n.split(".")[-2] in PROJ:
        wf = w.float(); beta = wf.abs().mean()
        t = (wf / beta.clamp(min=1e-5)).round().clamp(-1, 1)
        out[n] = pack_weights(t.to(torch.int8).clone())          # U8 [out/4, in]
        out[n[:-6] + "weight_scale"] = (1.0 / beta).to(torch.bfloat16).reshape(1)   # BitLinear DIVIDES -> store 1/beta
    else:
        out[n] = w
os.makedirs("/tmp/r7/packed", exist_ok=True)
save_file(out, "/tmp/r7/packed/model.safetensors", metadata={"format": "pt"})
c = json.load(open("/tmp/r7/master/config.json"))
c["quantization_config"] = {"modules_to_not_convert": None, "quant_method": "bitnet"}   # HF1BitLLM style
json.dump(c, open("/tmp/r7/packed/config.json", "w"), indent=2)
# load (bf16, as stored)
q = LlamaForCausalLM.from_pretrained("/tmp/r7/packed", attn_implementation="eager")
print("q_proj module:", type(q.model.layers[0].self_attn.q_proj).__name__, "| lm_head:", type(q.lm_head).__name__)
print("buffers:", {k: (str(v.dtype), tuple(v.shape)) for k, v in q.model.layers[0].self_attn.q_proj.named_buffers()})
ids = torch.tensor([[0, 5, 17, 200, 33, 9, 101]])
with torch.no_grad(): l1 = q(ids).logits
q.save_pretrained("/tmp/r7/resaved")
with safe_open("/tmp/r7/resaved/model.safetensors", "pt") as f:
    for k in sorted(f.keys()):
        if k.startswith("model.layers.1") : continue
        t = f.get_slice(k); print(f"  {k:45s} {t.get_dtype():5s} {t.get_shape()}")
rc = json.load(open("/tmp/r7/resaved/config.json")); print("config keys:", sorted(rc)); print("quantization_config:", rc["quantization_config"])
q2 = LlamaForCausalLM.from_pretrained("/tmp/r7/resaved", attn_implementation="eager")
with torch.no_grad(): l2 = q2(ids).logits
print("reload identical:", torch.equal(l1, l2), "logits", l1.dtype, tuple(l1.shape))
# byte identity of the packed tensors after the round trip
r = load_file("/tmp/r7/resaved/model.safetensors")
print("packed bytes identical after resave:", all(torch.equal(r[k], out[k]) for k in out))
