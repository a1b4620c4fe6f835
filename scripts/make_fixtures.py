#!/usr/bin/env python3
"""Generate the small BitNet b1.58 test fixtures under tests/fixtures/.

Purpose
-------
`tern` must read Hugging Face BitNet b1.58 checkpoints (model_type "bitnet", as
microsoft/bitnet-b1.58-2B-4T{,-bf16}) and reproduce transformers' forward pass.
No real checkpoint can be downloaded here, so this script builds tiny random
ones with transformers' own `BitNetConfig` / `BitNetForCausalLM` and records
golden data computed by transformers itself (see
shared/docs/hf-checkpoints.md for the formats and the exact quantisation
semantics).

How to run (from the repository root; about 6 s on 2 cores, most of it imports):

    python3 scripts/make_fixtures.py            # rewrites tests/fixtures/{tokenizer,tiny,odd,wide}
    python3 scripts/make_fixtures.py --shape 2b4t --out /some/dir
        # only a bf16 random checkpoint with the real 2B-4T shape (4.8 GB,
        # streamed tensor by tensor: ~30 s, peak RSS ~0.9 GB), no golden data.
        # Never write it into the repository.

Generated with torch 2.15.0 and transformers 5.24.0 (tokenizers 0.23.3,
safetensors 0.8.0); the versions actually used are written into every
golden.json. Everything is deterministic: fixed seeds (one torch.Generator per
tensor, seeded from the fixture and tensor name), deterministic algorithms,
fixed thread count; re-running gives byte-identical files on the same
machine/library versions.

Layout written
--------------
tests/fixtures/tokenizer/{tokenizer.json,tokenizer_config.json}   shared tokenizer
tests/fixtures/<name>/<form>/                                       name in {tiny, odd}, form in {bf16, packed}
    config.json model.safetensors generation_config.json tokenizer.json tokenizer_config.json
    golden/golden.safetensors golden/golden.json
tests/fixtures/wide/packed/                                         same files, packed form ONLY

* wide   : hidden 256, intermediate 512, 2 layers, 4 heads (head_dim 64), 2 kv
           heads, relu2, eps 1e-5, theta 500000, tied embeddings, vocab 400.
           Every projection's row length (in_features: 256 or 512) is a
           multiple of 256, so llama.cpp TQ1_0/TQ2_0 256-weight blocks and
           bitnet.cpp TL2 (K >= 256) hold it natively. Its bf16 master is built
           exactly like the others (same init scheme, seeded from "wide/<name>")
           but only in a temporary folder, which is deleted; only packed/ and
           its golden data are written (~1.3 MB). It is built after tiny/odd and
           draws from its own generators, so it does not change them.

* bf16   : bf16 master weights, quantization_config mode "online".
* packed : projections packed with transformers.integrations.bitnet.pack_weights
           (U8 [out/4, in]) + `<proj>.weight_scale` (beta, BF16, shape [1]),
           everything else identical; quantization_mode "offline".
* tiny/bf16/config.json is rewritten in the OLD spelling (`torch_dtype`,
  top-level `rope_theta`); every other config.json keeps the transformers-5
  spelling (`dtype`, `rope_parameters`).

Golden tensors (all f32 unless stated; batch dim squeezed):
    logits.{p}                 [T, vocab]
    residual.{p}.{l}           [T, H]  input of decoder layer l; l = L is the
                               output of the last layer BEFORE model.norm
    module.{path}.in / .out    prompt 0 only; path is the HF module path, e.g.
                               module.model.layers.0.self_attn.q_proj.in. For
                               `...self_attn` .in is the hidden_states input and
                               .out the attention output [T, H] (first element of
                               the module's output tuple, after o_proj).
    beta.{tensor name}         [1]  bf16 form: W.float().abs().mean();
                               packed form: the stored weight_scale as f32
    codes.{tensor name}        I8 [out, in], tiny/bf16 only: ternary codes from
                               transformers' own WeightQuant
Prompts 0..2 are random id sequences (lengths 7, 12, 5; prompt 0 starts with
bos 0), prompt 3 is `text_prompt` tokenised with the fixture tokenizer (bos
prepended by its post-processor).
"""

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib

# transformers wraps WeightQuant / ActQuant / unpack_weights in torch.compile:
# run them eagerly.
os.environ["TORCHDYNAMO_DISABLE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.use_deterministic_algorithms(True)
torch.set_num_threads(2)

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, BitNetConfig, BitNetForCausalLM, GenerationConfig  # noqa: E402
from transformers.integrations.bitnet import AutoBitLinear, WeightQuant, pack_weights, unpack_weights  # noqa: E402

try:  # progress bars only clutter the output
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")

TOKENIZER_VOCAB = 384
MODEL_VOCAB = 400
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]  # ids 0, 1, 2
BOS, EOS, EOT = 0, 1, 2
PROJ_SUFFIXES = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
NORM_SUFFIXES = (
    "input_layernorm", "post_attention_layernorm", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm",
)
PROMPT_LENGTHS = (7, 12, 5)
TEXT_PROMPT = "The quick brown fox jumps over the lazy dog. Ternary weights are -1, 0 or +1; café ☕!"
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is a ternary weight?"},
]
MAX_NEW_TOKENS = 8

# 2B-4T's own template (capitalised role + ": " + content + <|eot_id|>), which
# only needs the three special tokens above.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

CORPUS = """\
BitNet b1.58 is a large language model whose linear layers use ternary weights. Every weight is
minus one, zero or plus one, and a single scale per tensor restores the magnitude. The activations
are quantised to eight bits per token, so the matrix products can run on integers alone.

A decoder layer first normalises the residual stream with a root mean square norm. The queries,
keys and values are projected, rotated by the rotary position embedding, and compared with a
scaled dot product. The attention output is normalised again before the output projection, and
the result is added back to the residual stream.

The feed forward block is gated: the gate projection goes through a squared rectified linear
unit, is multiplied by the up projection, normalised once more and projected down. After the last
layer a final norm is applied and the language model head turns the hidden state into logits over
the vocabulary. The head shares its weights with the token embeddings.

The tokenizer works on bytes. Any text, in any language, can be split into bytes, and frequent
pairs of bytes are merged into longer tokens. The most frequent words of the training text become
single tokens, while rare words are spelled out from smaller pieces. The first token of every
prompt is the beginning of text marker, and generation stops at the end of text or end of turn.

The quick brown fox jumps over the lazy dog. The lazy dog sleeps in the sun while the fox runs
through the forest. In the morning the weather is cold, but by the afternoon the sun is warm and
the sky is clear. People walk along the river, children play in the park, and the old town is
quiet in the evening.

To check a new implementation, we compare it with the reference on small random models. The
logits, the residual stream after every layer and the inputs and outputs of each module are
saved, together with the tokens that greedy decoding produces. A test then loads the same files,
runs the same prompts and reports the largest difference it finds.

Numbers matter: one, two, three, four, five, six, seven, eight, nine and ten. The year has twelve
months and the week has seven days. A byte holds eight bits, and four ternary values fit into one
byte when each of them uses two bits.
"""


def versions():
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
    }


def gen_for(key):
    """A generator seeded from a string key, so tensors do not depend on iteration order."""
    return torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))


def is_proj(name):
    return name.endswith(".weight") and name[: -len(".weight")].endswith(PROJ_SUFFIXES) and ".layers." in name


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# --------------------------------------------------------------------------- tokenizer

def build_tokenizer(out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    paragraphs = [p.replace("\n", " ") for p in CORPUS.split("\n\n")]
    tok.train_from_iterator(paragraphs, trainer=trainer)
    # LLaMA-3 style: ByteLevel (offsets only) then prepend <|begin_of_text|>.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", BOS)],
        ),
    ])
    assert tok.get_vocab_size() == TOKENIZER_VOCAB, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)
    tok_cfg = {
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, s in enumerate(SPECIAL_TOKENS)
        },
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": SPECIAL_TOKENS[BOS],
        "eos_token": SPECIAL_TOKENS[EOS],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    write_json(os.path.join(out_dir, "tokenizer_config.json"), tok_cfg)
    return tok


def copy_tokenizer(tok_dir, dst):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tok_dir, f), os.path.join(dst, f))


# --------------------------------------------------------------------------- configs

FIXTURE_SPECS = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
                 max_position_embeddings=256, tie_word_embeddings=True),
    "odd": dict(hidden_size=96, intermediate_size=320, num_hidden_layers=3, num_attention_heads=3,
                num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=10000.0,
                max_position_embeddings=256, tie_word_embeddings=False),
    # every projection row length (in_features) is a multiple of 256: llama.cpp TQ1_0/TQ2_0 blocks
    # and bitnet.cpp TL2 (K >= 256) hold it natively. Packed form only (see build_all).
    "wide": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
                 max_position_embeddings=256, tie_word_embeddings=True),
    "2b4t": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30, num_attention_heads=20,
                 num_key_value_heads=5, rms_norm_eps=1e-5, rope_theta=500000.0,
                 max_position_embeddings=4096, tie_word_embeddings=True, vocab_size=128256),
}


def make_config(spec, mode):
    spec = dict(spec)
    theta = spec.pop("rope_theta")
    vocab = spec.pop("vocab_size", MODEL_VOCAB)
    cfg = BitNetConfig(
        vocab_size=vocab, hidden_act="relu2", bos_token_id=BOS, eos_token_id=EOS,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear",
                             "quantization_mode": mode},
        **spec,
    )
    cfg.dtype = torch.bfloat16
    return cfg


def generation_config():
    # like 2B-4T: stop on <|end_of_text|> or <|eot_id|>
    return GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, EOT])


# --------------------------------------------------------------------------- weights

def init_tensor(fixture, name, shape):
    """Realistic-ish random master weights (f32, later rounded to bf16)."""
    g = gen_for(f"{fixture}/{name}")
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return 1.0 + 0.2 * torch.randn(shape, generator=g)
    if is_proj(name):
        scale = 0.5 * 4.0 ** torch.rand((), generator=g).item()  # per-tensor scale in [0.5, 2)
        return torch.randn(shape, generator=g) * scale
    # embed_tokens, untied lm_head
    return torch.randn(shape, generator=g)


def build_bf16_checkpoint(fixture, out_dir, tok_dir):
    cfg = make_config(FIXTURE_SPECS[fixture], "online")
    torch.manual_seed(0)
    model = BitNetForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head appears once (as embed_tokens)
            p.copy_(init_tensor(fixture, name, tuple(p.shape)))
    model = model.to(torch.bfloat16)
    model.generation_config = generation_config()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    copy_tokenizer(tok_dir, out_dir)
    return cfg


def ternarize(w_bf16):
    """Reference absmean quantisation: (beta f32, codes int8)."""
    w = w_bf16.float()
    beta = w.abs().mean()
    inv = 1.0 / beta.clamp(min=1e-5)
    t = (w * inv).round().clamp(-1, 1)
    # must agree with transformers' own WeightQuant (dequantised t/inv -> sign == t)
    wq = WeightQuant.apply(w)
    assert torch.equal(torch.sign(wq), t), "WeightQuant disagrees with the absmean formula"
    return beta, t.to(torch.int8)


def pack_manual(t):
    """Doc formula (hf-checkpoints.md §1.3), used to cross-check pack_weights."""
    R = t.shape[0] // 4
    c = (t.to(torch.int32) + 1)
    p = c[0:R] | (c[R:2 * R] << 2) | (c[2 * R:3 * R] << 4) | (c[3 * R:4 * R] << 6)
    return p.to(torch.uint8)


def build_packed_checkpoint(fixture, bf16_dir, out_dir):
    masters = load_file(os.path.join(bf16_dir, "model.safetensors"))
    tensors = {}
    codes = {}
    for name, w in masters.items():
        if is_proj(name):
            assert w.dtype == torch.bfloat16
            beta, t = ternarize(w)
            assert t.shape[0] % 4 == 0
            packed = pack_weights(t.clone())  # pack_weights adds 1 in place: pass a copy
            assert packed.dtype == torch.uint8 and tuple(packed.shape) == (t.shape[0] // 4, t.shape[1])
            assert torch.equal(packed, pack_manual(t)), "pack_weights layout differs from the documented one"
            assert torch.equal(unpack_weights(packed, dtype=torch.float32), t.float())
            tensors[name] = packed.contiguous()
            tensors[name[: -len("weight")] + "weight_scale"] = beta.to(torch.bfloat16).reshape(1)
            codes[name] = (t, beta)
        else:
            tensors[name] = w.contiguous()
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    # config: identical except quantization_mode
    with open(os.path.join(bf16_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["quantization_config"]["quantization_mode"] = "offline"
    write_json(os.path.join(out_dir, "config.json"), cfg)
    for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(bf16_dir, f), os.path.join(out_dir, f))
    return codes


def rewrite_config_old_spelling(path):
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    out = {}
    for k, v in cfg.items():
        if k == "dtype":
            out["torch_dtype"] = v
        elif k == "rope_parameters":
            assert v.get("rope_type", "default") == "default"
            out["rope_theta"] = v["rope_theta"]
        else:
            out[k] = v
    write_json(path, out)


# --------------------------------------------------------------------------- loading / golden

def load_f32(folder):
    model = BitNetForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    loaded = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            loaded[name] = str(p.dtype).replace("torch.", "")
            if p.dtype != torch.float32:  # offline quirk: embeddings / norms / lm_head stay bf16
                p.data = p.data.float()
        for name, b in model.named_buffers():
            if name.endswith("weight_scale"):
                loaded[name] = str(b.dtype).replace("torch.", "")
                if b.dtype != torch.float32:
                    b.data = b.data.float()
    return model, loaded


def make_prompts(tok):
    g = gen_for("prompts")
    prompts = []
    for i, n in enumerate(PROMPT_LENGTHS):
        ids = torch.randint(0, TOKENIZER_VOCAB, (n,), generator=g).tolist()
        if i == 0:
            ids[0] = BOS
        prompts.append(ids)
    text_ids = tok.encode(TEXT_PROMPT).ids
    assert text_ids[0] == BOS
    prompts.append(text_ids)
    return prompts


def f32(x):
    return x.detach().to(torch.float32).squeeze(0).contiguous().clone()


def golden_for(fixture, form, folder, prompts, tok, with_codes, expect_codes=None):
    t0 = time.time()
    model, loaded_dtypes = load_f32(folder)
    L = model.config.num_hidden_layers
    out = {}
    state = {"p": None}

    hooks = []

    def layer_hook(idx):
        def hook(mod, args, kwargs, output):
            hs = args[0] if args else kwargs["hidden_states"]
            p = state["p"]
            if p is None:
                return
            out[f"residual.{p}.{idx}"] = f32(hs)
            o = output[0] if isinstance(output, tuple) else output
            if idx == L - 1:
                out[f"residual.{p}.{L}"] = f32(o)
            else:
                out[f"_next.{p}.{idx + 1}"] = f32(o)
        return hook

    def module_hook(path):
        def hook(mod, args, kwargs, output):
            if state["p"] != 0:
                return
            x = args[0] if args else kwargs["hidden_states"]
            o = output[0] if isinstance(output, tuple) else output
            out[f"module.{path}.in"] = f32(x)
            out[f"module.{path}.out"] = f32(o)
        return hook

    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(layer_hook(i), with_kwargs=True))
    for path, mod in model.named_modules():
        tail = path.split(".")[-1]
        if (isinstance(mod, AutoBitLinear) or path.endswith(NORM_SUFFIXES) or path == "model.norm"
                or tail == "self_attn"):
            hooks.append(mod.register_forward_hook(module_hook(path), with_kwargs=True))

    # sanity: every projection is an AutoBitLinear of the expected mode, lm_head is not
    for path, mod in model.named_modules():
        if path.endswith(PROJ_SUFFIXES):
            assert isinstance(mod, AutoBitLinear), (path, type(mod))
            assert mod.online_quant == (form == "bf16")
    assert not isinstance(model.lm_head, AutoBitLinear)

    with torch.no_grad():
        for p, ids in enumerate(prompts):
            state["p"] = p
            res = model(torch.tensor([ids]), use_cache=False)
            out[f"logits.{p}"] = f32(res.logits)
        state["p"] = None
        for h in hooks:
            h.remove()
        # consistency checks on the hooks
        for p in range(len(prompts)):
            for l in range(1, L):
                assert torch.equal(out.pop(f"_next.{p}.{l}"), out[f"residual.{p}.{l}"])
        assert torch.equal(out["module.model.norm.in"], out[f"residual.0.{L}"])
        for l in range(L):
            pre = f"module.model.layers.{l}"
            assert torch.equal(out[f"{pre}.self_attn.in"], out[f"{pre}.input_layernorm.out"])
            assert torch.equal(out[f"{pre}.self_attn.out"], out[f"{pre}.self_attn.o_proj.out"])
            assert torch.equal(out[f"{pre}.self_attn.o_proj.in"], out[f"{pre}.self_attn.attn_sub_norm.out"])

        # betas / codes
        st = load_file(os.path.join(folder, "model.safetensors"))
        for path, mod in model.named_modules():
            if not isinstance(mod, AutoBitLinear):
                continue
            wname = path + ".weight"
            if form == "bf16":
                w = st[wname]
                beta = w.float().abs().mean()
                assert torch.equal(mod.weight.detach(), w.float())
                out[f"beta.{wname}"] = beta.reshape(1).clone()
                if with_codes:
                    t = torch.sign(WeightQuant.apply(mod.weight.detach().float())).to(torch.int8)
                    assert torch.equal(t, expect_codes[wname][0])
                    out[f"codes.{wname}"] = t.contiguous()
            else:
                ws = st[path + ".weight_scale"]
                assert ws.dtype == torch.bfloat16 and tuple(ws.shape) == (1,)
                assert torch.equal(mod.weight_scale.detach(), ws.float()), path
                # transformers' unpacked weight must equal the ternary codes
                assert torch.equal(mod.weight.detach(), expect_codes[wname][0].float()), path
                assert torch.equal(ws.float(), expect_codes[wname][1].to(torch.bfloat16).float().reshape(1))
                out[f"beta.{wname}"] = ws.float().reshape(1).clone()

        # greedy decoding through the KV cache
        greedy = []
        for p, ids in enumerate(prompts):
            inp = torch.tensor([ids])
            gen = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                                 max_new_tokens=MAX_NEW_TOKENS, use_cache=True,
                                 pad_token_id=EOS)
            new = gen[0, len(ids):].tolist()
            # margins (top1 - top2) of a no-cache forward over the whole sequence at each
            # generation step, and whether the no-cache argmax agrees with the cached decode
            full = model(gen, use_cache=False).logits[0]
            margins, agree = [], True
            for s in range(len(new)):
                row = full[len(ids) - 1 + s]
                top2 = torch.topk(row, 2).values
                margins.append(float(top2[0] - top2[1]))
                agree &= int(row.argmax()) == new[s]
            greedy.append({"prompt": p, "new_tokens": new,
                           "stopped_on_eos": len(new) < MAX_NEW_TOKENS,
                           "nocache_argmax_agrees": bool(agree),
                           "nocache_top1_top2_margins": margins})

    # text prompt via transformers' tokenizer too
    hf_tok = AutoTokenizer.from_pretrained(folder)
    hf_ids = hf_tok(TEXT_PROMPT)["input_ids"]
    assert hf_ids == prompts[3], (hf_ids, prompts[3])
    chat_text = hf_tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    chat_ids = tok.encode(chat_text, add_special_tokens=False).ids
    hf_chat_ids = hf_tok(chat_text, add_special_tokens=False)["input_ids"]
    assert chat_ids == hf_chat_ids

    gdir = os.path.join(folder, "golden")
    os.makedirs(gdir, exist_ok=True)
    names = sorted(out)
    save_file({k: out[k] for k in names}, os.path.join(gdir, "golden.safetensors"),
              metadata={"format": "pt"})  # one key only: safetensors orders metadata keys randomly
    cfg = model.config
    summary = {
        "fixture": fixture, "form": form,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size, "tokenizer_vocab_size": TOKENIZER_VOCAB,
        "hidden_act": cfg.hidden_act, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_parameters["rope_theta"], "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings, "bos_token_id": BOS, "eos_token_id": EOS,
        "generation_eos_token_ids": [EOS, EOT],
        "quantization_mode": "online" if form == "bf16" else "offline",
        "config_spelling": "old (torch_dtype, rope_theta)" if (fixture, form) == ("tiny", "bf16")
        else "new (dtype, rope_parameters)",
    }
    golden = {
        **versions(),
        "generated_by": "scripts/make_fixtures.py",
        "compute": {"dtype": "float32", "attn_implementation": "eager", "TORCHDYNAMO_DISABLE": "1",
                    "torch_threads": torch.get_num_threads(),
                    "loaded_param_dtypes_before_cast": sorted(set(f"{k}: {v}" for k, v in loaded_dtypes.items()
                                                                   if v != "float32"))},
        "prompts": prompts,
        "text_prompt": {"text": TEXT_PROMPT, "ids": prompts[3], "prompt_index": 3,
                        "decoded": tok.decode(prompts[3], skip_special_tokens=False)},
        "chat_prompt": {"messages": CHAT_MESSAGES, "add_generation_prompt": True,
                        "text": chat_text, "ids_without_added_specials": chat_ids},
        "greedy": greedy,
        "greedy_settings": {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS, "use_cache": True,
                            "eos_token_id": [EOS, EOT],
                            "note": "generation stops early on any eos id; margins are top1-top2 of a "
                                    "no-cache f32 forward over prompt+new tokens"},
        "config": summary,
        "tensor_naming": {
            "logits.{p}": "f32 [T, vocab]",
            "residual.{p}.{l}": "f32 [T, H]; input of decoder layer l, l=L is last layer output before model.norm",
            "module.{path}.in|out": "f32, prompt 0 only; self_attn .out = first element of its output tuple",
            "beta.{tensor}": "f32 [1]; bf16 form: W.float().abs().mean(), packed form: weight_scale as f32",
            "codes.{tensor}": "i8 [out, in] (tiny/bf16 only), transformers WeightQuant ternary codes",
        },
        "tensor_names": names,
    }
    write_json(os.path.join(gdir, "golden.json"), golden)
    print(f"  golden {fixture}/{form}: {len(names)} tensors, greedy "
          f"{[g['new_tokens'] for g in greedy]} ({time.time() - t0:.1f}s)")
    return out


def check_old_spelling_equivalent(folder, prompt):
    """tiny/bf16: transformers must load the old-spelling config identically."""
    def run():
        m, _ = load_f32(folder)
        with torch.no_grad():
            return m.config, m(torch.tensor([prompt]), use_cache=False).logits
    c_new, l_new = run()
    rewrite_config_old_spelling(os.path.join(folder, "config.json"))
    c_old, l_old = run()
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    assert "torch_dtype" in raw and "rope_theta" in raw and "rope_parameters" not in raw and "dtype" not in raw
    d_new, d_old = c_new.to_dict(), c_old.to_dict()
    for d in (d_new, d_old):
        d.pop("transformers_version", None)
    assert d_new == d_old, {k: (d_new.get(k), d_old.get(k)) for k in set(d_new) | set(d_old)
                            if d_new.get(k) != d_old.get(k)}
    assert torch.equal(l_new, l_old)


def build_all():
    t_start = time.time()
    print("versions:", versions())
    tok_dir = os.path.join(FIXTURES, "tokenizer")
    tok = build_tokenizer(tok_dir)
    prompts = make_prompts(tok)
    print("prompts:", prompts)
    for fixture in ("tiny", "odd"):
        root = os.path.join(FIXTURES, fixture)
        if os.path.isdir(root):
            shutil.rmtree(root)
        bf16_dir = os.path.join(root, "bf16")
        packed_dir = os.path.join(root, "packed")
        build_bf16_checkpoint(fixture, bf16_dir, tok_dir)
        codes = build_packed_checkpoint(fixture, bf16_dir, packed_dir)
        if fixture == "tiny":
            check_old_spelling_equivalent(bf16_dir, prompts[0])
        golden_for(fixture, "bf16", bf16_dir, prompts, tok, with_codes=(fixture == "tiny"), expect_codes=codes)
        golden_for(fixture, "packed", packed_dir, prompts, tok, with_codes=False, expect_codes=codes)
    # wide: packed form only (keeps the repository small); its bf16 master is derived the same way
    # but written to a temporary folder and discarded.
    for fixture in ("wide",):
        root = os.path.join(FIXTURES, fixture)
        if os.path.isdir(root):
            shutil.rmtree(root)
        packed_dir = os.path.join(root, "packed")
        with tempfile.TemporaryDirectory(prefix=f"tern-{fixture}-bf16-") as bf16_dir:
            build_bf16_checkpoint(fixture, bf16_dir, tok_dir)
            codes = build_packed_checkpoint(fixture, bf16_dir, packed_dir)
        golden_for(fixture, "packed", packed_dir, prompts, tok, with_codes=False, expect_codes=codes)
    print(f"done in {time.time() - t_start:.1f}s")


# --------------------------------------------------------------------------- 2B-4T shape

def write_2b4t(out_dir, num_layers=None):
    """Random bf16 checkpoint with the real 2B-4T shape, streamed to disk tensor by tensor."""
    spec = dict(FIXTURE_SPECS["2b4t"])
    if num_layers is not None:  # for quick smoke tests only
        spec["num_hidden_layers"] = num_layers
    cfg = make_config(spec, "online")
    H, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = H // cfg.num_attention_heads * cfg.num_key_value_heads
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (H, H),
            p + "self_attn.k_proj.weight": (kv, H),
            p + "self_attn.v_proj.weight": (kv, H),
            p + "self_attn.attn_sub_norm.weight": (H,),
            p + "self_attn.o_proj.weight": (H, H),
            p + "post_attention_layernorm.weight": (H,),
            p + "mlp.gate_proj.weight": (I, H),
            p + "mlp.up_proj.weight": (I, H),
            p + "mlp.ffn_sub_norm.weight": (I,),
            p + "mlp.down_proj.weight": (H, I),
        })
    shapes["model.norm.weight"] = (H,)
    names = sorted(shapes)
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for n in names:
        nbytes = 2
        for d in shapes[n]:
            nbytes *= d
        header[n] = {"dtype": "BF16", "shape": list(shapes[n]), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for n in names:
            # one row block at a time keeps peak memory low (embedding is 328 M values)
            shape = shapes[n]
            rows = shape[0]
            step = max(1, (1 << 24) // (shape[1] if len(shape) > 1 else 1))
            g = gen_for(f"2b4t/{n}")
            scale = 0.5 * 4.0 ** torch.rand((), generator=g).item()
            for r in range(0, rows, step):
                sub = (min(step, rows - r),) + tuple(shape[1:])
                if n.endswith("norm.weight") or n.endswith("layernorm.weight"):
                    x = 1.0 + 0.2 * torch.randn(sub, generator=g)
                elif is_proj(n):
                    x = torch.randn(sub, generator=g) * scale
                else:
                    x = torch.randn(sub, generator=g)
                f.write(x.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    cfg.architectures = ["BitNetForCausalLM"]
    cfg.save_pretrained(out_dir)
    generation_config().save_pretrained(out_dir)
    tok_dir = os.path.join(FIXTURES, "tokenizer")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        tok_dir = tempfile.mkdtemp()
        build_tokenizer(tok_dir)
    copy_tokenizer(tok_dir, out_dir)
    print(f"wrote {out_dir}: {len(names)} tensors, {off} data bytes in {time.time() - t0:.1f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["2b4t"], help="only write a random bf16 checkpoint of this shape")
    ap.add_argument("--out", help="output folder for --shape (never inside the repo)")
    ap.add_argument("--num-layers", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.shape:
        if not args.out:
            ap.error("--shape needs --out")
        if os.path.realpath(args.out).startswith(os.path.realpath(REPO) + os.sep):
            ap.error("--out must be outside the repository (the checkpoint is ~4.8 GB)")
        write_2b4t(args.out, args.num_layers)
    else:
        build_all()


if __name__ == "__main__":
    main()
