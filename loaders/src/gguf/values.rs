//! GGUF metadata values: type ids, decoding and encoding.
//!
//! Layout (GGUF spec, v2/v3): a value is its payload, little-endian; a
//! string is a u64 length then bytes; an array is a u32 element type, a u64
//! count, then the elements (which may themselves be arrays).

use crate::error::{ErrorKind, LoadError};
use crate::gguf::cursor::Cursor;
use crate::metadata::{Value, ValueType};

/// Arrays nest at most this deep. Real files nest at most once (llama.cpp
/// cannot read nested arrays at all); the cap keeps a hostile file from
/// recursing the stack away.
pub const MAX_ARRAY_DEPTH: usize = 8;

pub(crate) fn value_type(id: u32) -> Option<ValueType> {
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

/// The fewest bytes one value of this type can take: fixed sizes, a string's
/// length prefix, an array's type and count.
fn min_size(ty: ValueType) -> usize {
    use ValueType::*;
    match ty {
        U8 | I8 | Bool => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 | String => 8,
        Array => 12,
    }
}

/// Reads a u32 type id.
pub(crate) fn read_type(c: &mut Cursor<'_>) -> Result<ValueType, LoadError> {
    let at = c.pos() as u64;
    let id = c.u32("value type")?;
    value_type(id).ok_or_else(|| LoadError::new(ErrorKind::UnknownValueType(id)).at(at))
}

/// Reads one value of type `ty`; `depth` counts enclosing arrays.
pub(crate) fn read_value(
    c: &mut Cursor<'_>,
    ty: ValueType,
    depth: usize,
) -> Result<Value, LoadError> {
    let at = c.pos() as u64;
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8("u8 value")?),
        ValueType::I8 => Value::I8(c.u8("i8 value")? as i8),
        ValueType::U16 => Value::U16(c.u16("u16 value")?),
        ValueType::I16 => Value::I16(c.u16("i16 value")? as i16),
        ValueType::U32 => Value::U32(c.u32("u32 value")?),
        ValueType::I32 => Value::I32(c.u32("i32 value")? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32("f32 value")?)),
        ValueType::U64 => Value::U64(c.u64("u64 value")?),
        ValueType::I64 => Value::I64(c.u64("i64 value")? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64("f64 value")?)),
        ValueType::Bool => match c.u8("bool value")? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(LoadError::new(ErrorKind::BadBool(b)).at(at)),
        },
        ValueType::String => Value::String(c.string("string value")?),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(LoadError::new(ErrorKind::NestingTooDeep {
                    max: MAX_ARRAY_DEPTH,
                })
                .at(at));
            }
            let elem = read_type(c)?;
            let n = c.count("array element", min_size(elem))?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, elem, depth + 1)?);
            }
            Value::Array(elem, items)
        }
    })
}

/// Appends `value` in GGUF layout (v2/v3: u64 lengths and counts).
/// Fails on an array whose elements are not all its declared type, or that
/// nests deeper than the reader accepts.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &Value, depth: usize) -> Result<(), LoadError> {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => write_string(out, s),
        Value::Array(elem, items) => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(LoadError::new(ErrorKind::NestingTooDeep {
                    max: MAX_ARRAY_DEPTH,
                }));
            }
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.value_type() != *elem {
                    let found = item.value_type();
                    return Err(LoadError::new(ErrorKind::MixedArray {
                        declared: *elem,
                        found,
                    }));
                }
                write_value(out, item, depth + 1)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}
