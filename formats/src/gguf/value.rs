//! GGUF metadata values: the 13 value types, and an ordered key → value list.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type can take on disk (bounds array allocations).
    pub fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value that fits in u64 (GGUF writers disagree on u32 vs u64 for counts).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An array of strings (tokens, merges).
    pub fn string_array(items: impl IntoIterator<Item = String>) -> Value {
        let mut a = Array::empty(ValueType::String);
        for item in items {
            a.push(Value::String(item));
        }
        Value::Array(a)
    }

    pub fn i32_array(items: impl IntoIterator<Item = i32>) -> Value {
        Value::Array(Array::from_values(ValueType::I32, items.into_iter().map(Value::I32).collect()))
    }
}

/// A GGUF array: an element type and the elements. Strings and integers up to 32 bits (and i64)
/// are held packed: a 128k-token vocabulary's `tokens` and `token_type` took 12 MB as one `Value`
/// per element (32 bytes each, plus a heap block per string) and take 1.6 MB packed.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    elem: ValueType,
    items: Items,
}

#[derive(Debug, Clone, PartialEq)]
enum Items {
    /// The strings back to back, and where each one ends.
    Strings { text: String, ends: Vec<usize> },
    /// Integers that fit i64 exactly (every integer type but u64).
    Ints(Vec<i64>),
    /// Anything else (u64, floats, bools, nested arrays), and elements not of the element type
    /// (which only a writer handed them would hold; it refuses them).
    Values(Vec<Value>),
}

impl Array {
    /// An empty array of `elem`s.
    pub fn empty(elem: ValueType) -> Array {
        let items = match elem {
            ValueType::String => Items::Strings { text: String::new(), ends: Vec::new() },
            t if packs_as_int(t) => Items::Ints(Vec::new()),
            _ => Items::Values(Vec::new()),
        };
        Array { elem, items }
    }

    pub fn from_values(elem: ValueType, values: Vec<Value>) -> Array {
        let mut a = Array::empty(elem);
        if let Items::Values(v) = &mut a.items {
            *v = values;
            return a;
        }
        for value in values {
            a.push(value);
        }
        a
    }

    /// Appends one element; one of another type turns the array into plain `Value`s.
    pub fn push(&mut self, value: Value) {
        match (&mut self.items, value) {
            (Items::Values(v), value) => v.push(value),
            (Items::Strings { .. }, Value::String(s)) => self.push_str(&s),
            // Ints exist only for integer element types, so `int_of` gives the value.
            (Items::Ints(v), value) if value.value_type() == self.elem => v.extend(int_of(&value)),
            (_, value) => {
                let mut values: Vec<Value> = self.iter().collect();
                values.push(value);
                self.items = Items::Values(values);
            }
        }
    }

    /// Appends a string element without a `Value` in between (the reader's path).
    pub fn push_str(&mut self, s: &str) {
        match &mut self.items {
            Items::Strings { text, ends } => {
                text.push_str(s);
                ends.push(text.len());
            }
            _ => self.push(Value::String(s.to_string())),
        }
    }

    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    pub fn len(&self) -> usize {
        match &self.items {
            Items::Strings { ends, .. } => ends.len(),
            Items::Ints(v) => v.len(),
            Items::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a string, when the array holds strings.
    pub fn str_at(&self, i: usize) -> Option<&str> {
        match &self.items {
            Items::Strings { text, ends } => {
                let end = *ends.get(i)?;
                let start = if i == 0 { 0 } else { ends[i - 1] };
                Some(&text[start..end])
            }
            Items::Values(v) => v.get(i)?.as_str(),
            Items::Ints(_) => None,
        }
    }

    /// Every element as a string, or None if any is not one.
    pub fn strings(&self) -> Option<Vec<&str>> {
        (0..self.len()).map(|i| self.str_at(i)).collect()
    }

    /// Element `i` (strings are copied).
    pub fn get(&self, i: usize) -> Option<Value> {
        match &self.items {
            Items::Strings { .. } => self.str_at(i).map(|s| Value::String(s.to_string())),
            Items::Ints(v) => v.get(i).map(|&x| int_value(self.elem, x)),
            Items::Values(v) => v.get(i).cloned(),
        }
    }

    /// The elements in order (strings are copied).
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

fn packs_as_int(t: ValueType) -> bool {
    use ValueType::*;
    matches!(t, U8 | I8 | U16 | I16 | U32 | I32 | I64)
}

fn int_of(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x as i64,
        Value::I8(x) => x as i64,
        Value::U16(x) => x as i64,
        Value::I16(x) => x as i64,
        Value::U32(x) => x as i64,
        Value::I32(x) => x as i64,
        Value::I64(x) => x,
        _ => return None,
    })
}

/// The value of type `t` that [`int_of`] turned into `x` (exact: `x` came from a `t`).
fn int_value(t: ValueType, x: i64) -> Value {
    match t {
        ValueType::U8 => Value::U8(x as u8),
        ValueType::I8 => Value::I8(x as i8),
        ValueType::U16 => Value::U16(x as u16),
        ValueType::I16 => Value::I16(x as i16),
        ValueType::U32 => Value::U32(x as u32),
        ValueType::I32 => Value::I32(x as i32),
        _ => Value::I64(x),
    }
}

/// Short human form: long arrays are summarised, long strings cut.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 6;
        match self {
            Value::String(s) => {
                let short: String = s.chars().take(80).collect();
                if short.len() < s.len() {
                    write!(f, "{short:?}… ({} bytes)", s.len())
                } else {
                    write!(f, "{s:?}")
                }
            }
            Value::Array(a) => {
                write!(f, "[")?;
                for (i, v) in a.iter().take(SHOWN).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len() > SHOWN {
                    write!(f, ", … {} {} items", a.len(), a.elem_type().name())?;
                }
                write!(f, "]")
            }
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

/// Metadata in file order. Lookups are linear: files hold a few dozen keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata(pub Vec<(String, Value)>);

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets a key, replacing an existing one in place (keeps order stable).
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packed strings and integers read back as the values that went in, in order; an element of
    /// another type keeps every element (as plain values) for the writer to refuse.
    #[test]
    fn packed_arrays_give_back_their_elements() {
        let words = ["", "Ġthe", "é", "<|eot_id|>", ""];
        let a = Value::string_array(words.iter().map(|w| w.to_string()));
        let a = a.as_array().unwrap();
        assert_eq!((a.elem_type(), a.len()), (ValueType::String, 5));
        assert_eq!(a.strings().unwrap(), words);
        assert_eq!(a.get(1), Some(Value::String("Ġthe".into())));
        assert_eq!(a.str_at(5), None);

        let ints = [i32::MIN, -1, 0, 7, i32::MAX];
        let b = Array::from_values(ValueType::I32, ints.iter().map(|&x| Value::I32(x)).collect());
        assert_eq!(b.iter().collect::<Vec<_>>(), ints.map(Value::I32));
        let u = Array::from_values(ValueType::U32, vec![Value::U32(u32::MAX), Value::U32(0)]);
        assert_eq!(u.get(0), Some(Value::U32(u32::MAX)));
        let big = Array::from_values(ValueType::U64, vec![Value::U64(u64::MAX)]);
        assert_eq!(big.get(0), Some(Value::U64(u64::MAX)));

        let mut mixed = Array::from_values(ValueType::I32, vec![Value::I32(3)]);
        mixed.push(Value::String("x".into()));
        assert_eq!(mixed.iter().collect::<Vec<_>>(), [Value::I32(3), Value::String("x".into())]);
        assert_eq!(mixed.strings(), None);
    }
}
