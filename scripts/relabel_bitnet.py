#!/usr/bin/env python3
"""Copies a tern GGUF of the 2B-4T family (architecture `bitnet-b1.58`) as architecture `bitnet`,
so that mainline llama.cpp (llama-bench, llama-server) loads it — for SPEED comparisons only:
llama.cpp runs `bitnet` with SiLU in the FFN where 2B-4T needs relu², so its numbers are wrong.

    python3 scripts/relabel_bitnet.py IN.gguf OUT.gguf

Every metadata key under `bitnet-b1.58.` moves to `bitnet.`; tensors are copied byte for byte.
Needs the `gguf` Python package (pip install gguf).
"""

import sys

import gguf


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    if src == dst:
        sys.exit("refusing to overwrite the input")
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    if arch != "bitnet-b1.58":
        sys.exit(f"{src}: architecture is {arch!r}, not 'bitnet-b1.58'")
    writer = gguf.GGUFWriter(dst, arch="bitnet")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        name = field.name.replace("bitnet-b1.58.", "bitnet.", 1)
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    print(f"wrote {dst} (architecture bitnet)")


if __name__ == "__main__":
    main()
