#!/usr/bin/env python3
"""Where do f32 engines part from exact arithmetic on the demo model? (run by hand; needs torch)

A greedy continuation of the demo model (tests/fixtures/demo) is fed back as one sequence and
its logits at every position are computed by transformers in f32 and in f64 (eager and sdpa
attention) and by tern (`tern logits` on a GGUF: the runtime; on the checkpoint folder: tern's
f32 reference). For each engine the script prints, per position, the largest logit difference
from f64 eager attention (exact arithmetic up to rounding at 1e-16), and the top two tokens at
the last position with their gap.

What it shows (docs/reference.md, "End to end on a trained network"): every f32 engine tracks
f64 to ~1e-5 until one int8 activation lands within f32 rounding of a .5 boundary and rounds
the other way; from there on its logits differ by ~5e-2, enough to swap two tokens whose gap is
a few 1e-3. Which engine flips, and where, is luck.

    pip install torch==2.15.0 transformers==5.24.0 safetensors==0.8.0 numpy
    cargo build --release
    target/release/tern convert tests/fixtures/demo/packed -o /tmp/demo-i2_s.gguf --type i2_s
    python3 scripts/near_tie.py --gguf /tmp/demo-i2_s.gguf --prompt 4 --step 34
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import train_demo  # noqa: E402  (the model loader the golden data was written with)

PACKED = os.path.join(ROOT, "tests", "fixtures", "demo", "packed")
GOLDEN = os.path.join(PACKED, "golden", "golden.json")


def transformers_logits(ids, attn, dtype):
    model = train_demo.load_packed_f32(PACKED, attn=attn)
    if dtype == torch.float64:
        model = model.double()
        for name, buf in model.named_buffers():
            if name.endswith("weight_scale"):
                buf.data = buf.data.double()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double().numpy()


def tern_logits(tern, model, ids):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.npy")
        subprocess.run([tern, "logits", model, "--tokens", ",".join(map(str, ids)), "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        return np.load(out).astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="the demo model converted to a GGUF")
    ap.add_argument("--tern", default=os.path.join(ROOT, "target", "release", "tern"))
    ap.add_argument("--prompt", type=int, default=4, help="index of the golden greedy prompt")
    ap.add_argument("--step", type=int, default=34, help="generated tokens to feed back")
    args = ap.parse_args()
    case = json.load(open(GOLDEN))["greedy"][args.prompt]
    ids = list(case["ids"]) + case["tokens"][:args.step]
    print(f"prompt {case['prompt']!r} + {args.step} greedy tokens: {len(ids)} positions")
    engines = {
        "transformers eager f64": transformers_logits(ids, "eager", torch.float64),
        "transformers sdpa f64": transformers_logits(ids, "sdpa", torch.float64),
        "transformers eager f32": transformers_logits(ids, "eager", torch.float32),
        "transformers sdpa f32": transformers_logits(ids, "sdpa", torch.float32),
        "tern runtime (GGUF)": tern_logits(args.tern, args.gguf, ids),
        "tern f32 reference": tern_logits(args.tern, PACKED, ids),
    }
    exact = engines["transformers eager f64"]
    for name, logits in engines.items():
        diff = np.abs(logits - exact).max(axis=1)
        parted = next((p for p, d in enumerate(diff) if d > 1e-3), None)
        last = logits[-1]
        top = np.argsort(-last)[:2]
        print(f"{name:24s} top-2 {top[0]:5d} {top[1]:5d} gap {last[top[0]] - last[top[1]]:.2e}; "
              f"max |Δ| vs f64 {diff[:parted].max() if parted != 0 else 0:.1e} before position "
              f"{parted if parted is not None else len(ids)}, {diff.max():.1e} overall")


if __name__ == "__main__":
    main()
