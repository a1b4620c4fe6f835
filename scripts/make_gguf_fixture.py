#!/usr/bin/env python3
"""Write a small GGUF file with the reference `gguf` Python package (GGUFWriter).

Purpose: a Rust test reads tests/fixtures/gguf/python_written.gguf with tern's
own GGUF reader and compares it with tests/fixtures/gguf/python_written.json,
which describes exactly what was written:

* metadata: every GGUF value type (u8, i8, u16, i16, u32, i32, f32, bool,
  string, u64, i64, f64) and arrays (of i32, f32, strings, several other
  element types, and an empty array), in file order, each as
  {"key", "type", "value"} or {"key", "type": "array", "element_type", "value"};
  type names are the lower-case GGUFValueType names (uint8, int8, ..., float64,
  bool, string, array). f32 values are given as the exact float they round to.
  u64/i64 values are JSON integers (some above 2^53: parse them as integers).
* tensors: name, ggml type id (0 = F32, 1 = F16), GGUF dims (ne order,
  innermost first, i.e. the reverse of the numpy shape), numpy shape, byte
  offset relative to the start of the tensor data section, and the values as a
  flat list in file (row-major) order; F16 values are the floats they round to.

How to run (from the repo root, < 1 s):  python3 scripts/make_gguf_fixture.py
Written with gguf 0.19.0 (numpy 2.4); the script reads the file back with
gguf.GGUFReader and asserts it matches the JSON.
"""

import json
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "gguf")
GGUF_PATH = os.path.join(OUT_DIR, "python_written.gguf")
JSON_PATH = os.path.join(OUT_DIR, "python_written.json")
ARCH = "bitnet-b1.58"


class Writer(GGUFWriter):
    """GGUFWriter refuses empty arrays (add_array silently drops them, _pack_val raises);
    the format allows them (element type + count 0), so write those ourselves."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype == GGUFValueType.ARRAY and len(val) == 0:
            assert sub_type is not None
            out = bytearray()
            if add_vtype:
                out += self._pack("I", vtype)
            out += self._pack("I", sub_type)
            out += self._pack("Q", 0)
            return bytes(out)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def f32(x):
    return float(np.float32(x))


# (key, scalar type or ARRAY, value, array element type)
METADATA = [
    # general.architecture (string) is added by GGUFWriter itself, first.
    ("general.name", GGUFValueType.STRING, "tern gguf fixture", None),
    (f"{ARCH}.context_length", GGUFValueType.UINT32, 256, None),
    (f"{ARCH}.embedding_length", GGUFValueType.UINT32, 128, None),
    (f"{ARCH}.attention.layer_norm_rms_epsilon", GGUFValueType.FLOAT32, f32(1e-5), None),
    ("test.u8", GGUFValueType.UINT8, 200, None),
    ("test.i8", GGUFValueType.INT8, -100, None),
    ("test.u16", GGUFValueType.UINT16, 60000, None),
    ("test.i16", GGUFValueType.INT16, -30000, None),
    ("test.u32", GGUFValueType.UINT32, 4000000000, None),
    ("test.i32", GGUFValueType.INT32, -2000000000, None),
    ("test.f32", GGUFValueType.FLOAT32, f32(3.14159), None),
    ("test.bool_true", GGUFValueType.BOOL, True, None),
    ("test.bool_false", GGUFValueType.BOOL, False, None),
    ("test.string", GGUFValueType.STRING, "héllo, wörld ☕ \"quoted\"\nnew line", None),
    ("test.string_empty", GGUFValueType.STRING, "", None),
    ("test.u64", GGUFValueType.UINT64, 2**63 + 12345, None),
    ("test.i64", GGUFValueType.INT64, -(2**62) - 7, None),
    ("test.f64", GGUFValueType.FLOAT64, 2.718281828459045, None),
    ("test.arr_i32", GGUFValueType.ARRAY, [1, -2, 3, -2147483648, 2147483647], GGUFValueType.INT32),
    ("test.arr_f32", GGUFValueType.ARRAY, [f32(v) for v in (0.5, -1.25, 1e-3, 65504.0, -0.0)], GGUFValueType.FLOAT32),
    ("test.arr_str", GGUFValueType.ARRAY, ["<|begin_of_text|>", "Ġthe", "", "ü"], GGUFValueType.STRING),
    ("test.arr_u8", GGUFValueType.ARRAY, [0, 1, 255], GGUFValueType.UINT8),
    ("test.arr_i64", GGUFValueType.ARRAY, [-(2**40), 2**40 + 1], GGUFValueType.INT64),
    ("test.arr_f64", GGUFValueType.ARRAY, [0.1, -2.5e300], GGUFValueType.FLOAT64),
    ("test.arr_bool", GGUFValueType.ARRAY, [True, False, True], GGUFValueType.BOOL),
    ("test.arr_empty", GGUFValueType.ARRAY, [], GGUFValueType.INT32),
]


def make_tensors():
    a = (np.arange(15, dtype=np.float32).reshape(3, 5) - 7.0) * np.float32(0.25)
    b = (np.linspace(-2.0, 2.0, 32, dtype=np.float32) ** 3 / 3.0 + 0.1).astype(np.float16).reshape(4, 8)
    c = np.array([1.0, -1.0, 0.0, 0.5, 1e-7, -123.456, 3.0e38], dtype=np.float32)
    return [("test.f32_3x5", a, GGMLQuantizationType.F32),
            ("test.f16_4x8", b, GGMLQuantizationType.F16),
            ("test.f32_vec7", c, GGMLQuantizationType.F32)]


def type_name(t):
    return GGUFValueType(t).name.lower()


SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def check_raw(path, desc):
    """Independent little parser (no gguf package) of the bytes, checked against the JSON."""
    import struct
    buf = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("<Q")
        v = buf[pos:pos + n].decode("utf-8")
        pos += n
        return v

    def value(t):
        if t == 8:
            return "string", string()
        if t == 9:
            et, n = take("<I"), take("<Q")
            return ("array", GGUFValueType(et).name.lower()), [value(et)[1] for _ in range(n)]
        return GGUFValueType(t).name.lower(), take(SCALAR_FMT[t])

    assert buf[:4] == b"GGUF" and take("<4s") and take("<I") == desc["version"]
    n_t, n_kv = take("<Q"), take("<Q")
    assert (n_t, n_kv) == (desc["tensor_count"], desc["kv_count"])
    for m in desc["metadata"]:
        key = string()
        typ, val = value(take("<I"))
        assert key == m["key"], (key, m["key"])
        if m["type"] == "array":
            assert typ == ("array", m["element_type"]), (key, typ)
        else:
            assert typ == m["type"], (key, typ)
        assert val == m["value"] and json.dumps(val) == json.dumps(m["value"]), (key, val, m["value"])
    infos = []
    for d in desc["tensors"]:
        name = string()
        nd = take("<I")
        dims = [take("<Q") for _ in range(nd)]
        ty, off = take("<I"), take("<Q")
        assert (name, dims, ty, off) == (d["name"], d["dims"], d["ggml_type"], d["offset"]), (name, dims, ty, off)
        infos.append(d)
    data = (pos + 31) // 32 * 32
    assert data == desc["data_section_offset"], (data, desc["data_section_offset"])
    for d in infos:
        dt = np.float32 if d["ggml_type"] == 0 else np.float16
        arr = np.frombuffer(buf, dtype=dt, count=int(np.prod(d["dims"])), offset=data + d["offset"])
        assert [float(v) for v in arr.astype(np.float32)] == d["values"], d["name"]


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    w = Writer(GGUF_PATH, ARCH)
    for key, vtype, val, sub in METADATA:
        w.add_key_value(key, val, vtype, sub_type=sub)
    tensors = make_tensors()
    for name, arr, _ in tensors:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # ---- describe it
    meta = [{"key": "general.architecture", "type": "string", "value": ARCH}]
    for key, vtype, val, sub in METADATA:
        if vtype == GGUFValueType.ARRAY:
            meta.append({"key": key, "type": "array", "element_type": type_name(sub), "value": list(val)})
        else:
            meta.append({"key": key, "type": type_name(vtype), "value": val})

    reader = GGUFReader(GGUF_PATH)
    rt = {t.name: t for t in reader.tensors}
    tens = []
    for name, arr, ggml_type in tensors:
        t = rt[name]
        tens.append({
            "name": name,
            "ggml_type": int(ggml_type),
            "ggml_type_name": ggml_type.name,
            "dims": [int(d) for d in reversed(arr.shape)],
            "numpy_shape": list(arr.shape),
            "offset": int(t.data_offset - reader.data_offset),
            "n_bytes": int(arr.nbytes),
            "values": [float(v) for v in arr.astype(np.float32).ravel()],
        })
    desc = {
        "generated_by": "scripts/make_gguf_fixture.py",
        "gguf_python_package": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "magic": "GGUF",
        "version": 3,
        "endianness": "little",
        "alignment": 32,
        "tensor_count": len(tens),
        "kv_count": len(meta),
        "data_section_offset": int(reader.data_offset),
        "file_size": os.path.getsize(GGUF_PATH),
        "metadata": meta,
        "tensors": tens,
    }
    with open(JSON_PATH, "w", encoding="utf-8") as f:
        json.dump(desc, f, indent=1, ensure_ascii=False)
        f.write("\n")

    # ---- read back with the reference reader and check against the description
    fields = {k: v for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == [m["key"] for m in meta], list(fields)
    for m in meta:
        fld = fields[m["key"]]
        assert type_name(fld.types[0]) == m["type"], (m["key"], fld.types)
        if m["type"] == "array":
            assert type_name(fld.types[1] if len(fld.types) > 1 else GGUFValueType.INT32) == m["element_type"] \
                or not m["value"], (m["key"], fld.types)
            got = [fld.parts[i].tobytes().decode("utf-8") if m["element_type"] == "string"
                   else fld.parts[i].item() for i in fld.data]
        elif m["type"] == "string":
            got = fld.parts[fld.data[0]].tobytes().decode("utf-8")
        else:
            got = fld.parts[fld.data[0]].item()
        if m["type"] == "bool" or m.get("element_type") == "bool":
            got = [bool(x) for x in got] if isinstance(got, list) else bool(got)
        assert got == m["value"], (m["key"], got, m["value"])
    for d, (name, arr, ggml_type) in zip(tens, tensors):
        t = rt[name]
        assert int(t.tensor_type) == d["ggml_type"]
        assert [int(x) for x in t.shape] == d["dims"], (t.shape, d["dims"])
        assert np.array_equal(np.asarray(t.data).reshape(arr.shape), arr)
        assert (reader.data_offset + d["offset"]) % 32 == 0
    check_raw(GGUF_PATH, desc)
    print(f"wrote {GGUF_PATH} ({desc['file_size']} bytes, {len(meta)} kv, {len(tens)} tensors) and {JSON_PATH}")


if __name__ == "__main__":
    main()
