"""Drives a running `tern serve` with the official `openai` client (tests/serve.rs runs it).

    python3 tests/serve_openai.py SPEC.json

SPEC: {"base_url": ..., "api_key": ..., "model": ..., "cases": [{"kind": "completion" | "chat",
"prompt" | "messages", "max_tokens", "expected"}]}, where "expected" is what `tern run --greedy`
printed for the same tokens. Every case runs with temperature 0, streamed and not; the text must
equal "expected", and the usage counts must add up. Exits 1 on the first difference.
"""

import json
import sys

from openai import OpenAI


def main():
    spec = json.load(open(sys.argv[1], encoding="utf-8"))
    client = OpenAI(base_url=spec["base_url"], api_key=spec["api_key"], max_retries=0, timeout=120)
    models = [m.id for m in client.models.list().data]
    assert models == [spec["model"]], models
    failures = 0
    for i, case in enumerate(spec["cases"]):
        common = dict(model=spec["model"], max_tokens=case["max_tokens"], temperature=0)
        if case["kind"] == "completion":
            whole = client.completions.create(prompt=case["prompt"], **common)
            text, usage = whole.choices[0].text, whole.usage
            streamed = "".join(
                c.choices[0].text for c in client.completions.create(prompt=case["prompt"], stream=True, **common)
                if c.choices
            )
        else:
            whole = client.chat.completions.create(messages=case["messages"], **common)
            text, usage = whole.choices[0].message.content, whole.usage
            assert whole.choices[0].message.role == "assistant"
            pieces, stream_usage = [], None
            for c in client.chat.completions.create(
                messages=case["messages"], stream=True, stream_options={"include_usage": True}, **common
            ):
                if c.choices and c.choices[0].delta.content:
                    pieces.append(c.choices[0].delta.content)
                if c.usage:
                    stream_usage = c.usage
            streamed = "".join(pieces)
            assert stream_usage is not None and stream_usage.completion_tokens == usage.completion_tokens, stream_usage
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
        assert 0 < usage.completion_tokens <= case["max_tokens"], usage
        for name, got in (("non-streamed", text), ("streamed", streamed)):
            ok = got == case["expected"]
            failures += not ok
            print(f"case {i} {case['kind']} {name}: {'same as tern run' if ok else 'DIFFERS'} {got!r}")
            if not ok:
                print(f"  tern run: {case['expected']!r}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
