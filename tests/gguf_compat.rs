//! tern's GGUF reader on a file written by another implementation: the `gguf` Python package
//! (scripts/make_gguf_fixture.py wrote the file and a JSON description of what it holds).

mod common;
use common::fixtures;
use half::f16;
use tern_formats::gguf::{GgufFile, Value};

fn json_matches(v: &Value, expected: &serde_json::Value) -> bool {
    match v {
        Value::Array(a) => {
            let e = expected.as_array().expect("array expected");
            a.len() == e.len() && a.iter().zip(e).all(|(a, b)| json_matches(&a, b))
        }
        Value::String(s) => expected.as_str() == Some(s),
        Value::Bool(b) => expected.as_bool() == Some(*b),
        Value::F32(x) => expected.as_f64().is_some_and(|e| e as f32 == *x),
        Value::F64(x) => expected.as_f64() == Some(*x),
        Value::I8(x) => expected.as_i64() == Some(*x as i64),
        Value::I16(x) => expected.as_i64() == Some(*x as i64),
        Value::I32(x) => expected.as_i64() == Some(*x as i64),
        Value::I64(x) => expected.as_i64() == Some(*x),
        other => other.as_u64().is_some() && expected.as_u64() == other.as_u64(),
    }
}

#[test]
fn reads_a_gguf_written_by_the_python_package() {
    let dir = fixtures().join("gguf");
    let f = GgufFile::open(dir.join("python_written.gguf")).unwrap();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("python_written.json")).unwrap()).unwrap();
    let md = spec["metadata"].as_array().expect("metadata list");
    assert_eq!(f.metadata().len(), md.len());
    assert_eq!(f.header.data_offset, spec["data_section_offset"].as_u64().unwrap());
    let mut checked = 0;
    for (entry, (key, v)) in md.iter().zip(f.metadata().iter()) {
        assert_eq!(entry["key"].as_str(), Some(key), "metadata order");
        // The package names types uint8/int32/float64/...; tern u8/i32/f64.
        let short = |t: &str| t.replace("uint", "u").replace("int", "i").replace("float", "f");
        let ty = short(entry["type"].as_str().unwrap());
        assert_eq!(ty, v.value_type().name(), "{key}");
        if let Value::Array(a) = v {
            assert_eq!(short(entry["element_type"].as_str().unwrap()), a.elem_type().name(), "{key}");
        }
        assert!(json_matches(v, &entry["value"]), "{key}: {v} vs {}", entry["value"]);
        checked += 1;
    }
    assert!(checked >= 20, "every value type should be covered");
    for t in spec["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let info = f.tensor(name).unwrap_or_else(|| panic!("tensor {name} missing"));
        assert_eq!(info.ty.id() as u64, t["ggml_type"].as_u64().unwrap(), "{name}");
        assert_eq!(
            info.offset,
            spec["data_section_offset"].as_u64().unwrap() + t["offset"].as_u64().unwrap()
        );
        let dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(info.dims, dims, "{name}");
        let data = f.data(info);
        // Compared as f32: every value is an f32 or f16 and JSON holds its exact decimal.
        let values: Vec<f32> = match info.ty.id() {
            0 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            1 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => panic!("unexpected type {other}"),
        };
        let expected: Vec<f32> =
            t["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(values, expected, "{name}");
    }
}
