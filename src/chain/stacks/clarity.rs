//! Clarity values in their consensus serialization (SIP-005): what contract-call arguments,
//! read-only call results and print events carry. Decoding is bounded (depth, sizes) and strict
//! (tuple names sorted and unique, UTF-8 checked), so a hostile node or peer gets an error, never
//! a panic or an allocation it chose.
//!
//! Written here rather than taken from stacks-core's `clarity` crate, which brings the whole
//! Clarity VM and its database; the format is small, and the tests check it against
//! `@stacks/transactions`, the library wallets use.

use std::collections::BTreeMap;
use std::fmt;

use super::address::Principal;

/// A Clarity value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i128),
    UInt(u128),
    Bool(bool),
    Buffer(Vec<u8>),
    Principal(Principal),
    ResponseOk(Box<Value>),
    ResponseErr(Box<Value>),
    None,
    Some(Box<Value>),
    List(Vec<Value>),
    /// Field names sorted (Clarity's order), unique.
    Tuple(BTreeMap<String, Value>),
    StringAscii(String),
    StringUtf8(String),
}

const INT: u8 = 0x00;
const UINT: u8 = 0x01;
const BUFFER: u8 = 0x02;
const TRUE: u8 = 0x03;
const FALSE: u8 = 0x04;
const STANDARD: u8 = 0x05;
const CONTRACT: u8 = 0x06;
const OK: u8 = 0x07;
const ERR: u8 = 0x08;
const NONE: u8 = 0x09;
const SOME: u8 = 0x0a;
const LIST: u8 = 0x0b;
const TUPLE: u8 = 0x0c;
const ASCII: u8 = 0x0d;
const UTF8: u8 = 0x0e;

/// Clarity's limits: nesting depth and the size of one value.
pub const MAX_DEPTH: usize = 32;
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Why bytes are not a Clarity value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClarityError {
    #[error("Clarity value truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown Clarity type byte {byte:#04x} at byte {at}")]
    UnknownType { byte: u8, at: usize },
    #[error("Clarity value nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("{0} trailing bytes after the Clarity value")]
    Trailing(usize),
    #[error("tuple field names out of order or repeated at `{0}`")]
    TupleOrder(String),
    #[error("string-ascii holds a byte outside printable ASCII")]
    NotAscii,
    #[error("string-utf8 or a name is not valid UTF-8")]
    NotUtf8,
    #[error("bad principal in a Clarity value: {0}")]
    Principal(String),
}

impl Value {
    pub fn tuple<const N: usize>(fields: [(&str, Value); N]) -> Value {
        Value::Tuple(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    pub fn some(v: Value) -> Value {
        Value::Some(Box::new(v))
    }

    pub fn ok(v: Value) -> Value {
        Value::ResponseOk(Box::new(v))
    }

    pub fn err(v: Value) -> Value {
        Value::ResponseErr(Box::new(v))
    }

    /// The consensus serialization.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        let len = |out: &mut Vec<u8>, n: usize| {
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes())
        };
        match self {
            Value::Int(i) => {
                out.push(INT);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::UInt(u) => {
                out.push(UINT);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Value::Bool(true) => out.push(TRUE),
            Value::Bool(false) => out.push(FALSE),
            Value::Buffer(b) => {
                out.push(BUFFER);
                len(out, b.len());
                out.extend_from_slice(b);
            }
            Value::Principal(p) => out.extend_from_slice(&p.serialize()),
            Value::ResponseOk(v) => {
                out.push(OK);
                v.write(out);
            }
            Value::ResponseErr(v) => {
                out.push(ERR);
                v.write(out);
            }
            Value::None => out.push(NONE),
            Value::Some(v) => {
                out.push(SOME);
                v.write(out);
            }
            Value::List(items) => {
                out.push(LIST);
                len(out, items.len());
                for v in items {
                    v.write(out);
                }
            }
            Value::Tuple(fields) => {
                out.push(TUPLE);
                len(out, fields.len());
                for (name, v) in fields {
                    out.push(name.len().min(u8::MAX as usize) as u8);
                    out.extend_from_slice(name.as_bytes());
                    v.write(out);
                }
            }
            Value::StringAscii(s) => {
                out.push(ASCII);
                len(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::StringUtf8(s) => {
                out.push(UTF8);
                len(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Decodes exactly one value filling `bytes`.
    pub fn deserialize(bytes: &[u8]) -> Result<Value, ClarityError> {
        let (v, used) = Value::deserialize_prefix(bytes)?;
        match bytes.len() - used {
            0 => Ok(v),
            n => Err(ClarityError::Trailing(n)),
        }
    }

    /// Decodes the one value at the start of `bytes` (at most [`MAX_VALUE_BYTES`] of them) and
    /// says how many bytes it took: for values inside a larger encoding.
    pub fn deserialize_prefix(bytes: &[u8]) -> Result<(Value, usize), ClarityError> {
        let bytes = &bytes[..bytes.len().min(MAX_VALUE_BYTES)];
        let mut r = Reader { bytes, at: 0 };
        let v = r.value(0)?;
        Ok((v, r.at))
    }

    /// The hex form read-only calls and events use (`0x` prefix optional).
    pub fn from_hex(text: &str) -> Result<Value, ClarityError> {
        let text = text.strip_prefix("0x").unwrap_or(text);
        let bytes = hex::decode(text).map_err(|_| ClarityError::Truncated(0))?;
        Value::deserialize(&bytes)
    }

    pub fn to_hex(&self) -> String {
        format!("0x{}", hex::encode(self.serialize()))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ClarityError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ClarityError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(ClarityError::Truncated(self.bytes.len()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, ClarityError> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self) -> Result<usize, ClarityError> {
        let b = self.take(4)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        // Every element takes at least one byte: a length beyond what is left is a lie.
        if n > self.bytes.len() - self.at {
            return Err(ClarityError::Truncated(self.bytes.len()));
        }
        Ok(n)
    }

    fn value(&mut self, depth: usize) -> Result<Value, ClarityError> {
        if depth > MAX_DEPTH {
            return Err(ClarityError::TooDeep);
        }
        let at = self.at;
        let kind = self.byte()?;
        Ok(match kind {
            INT => Value::Int(i128::from_be_bytes(self.array()?)),
            UINT => Value::UInt(u128::from_be_bytes(self.array()?)),
            TRUE => Value::Bool(true),
            FALSE => Value::Bool(false),
            BUFFER => {
                let n = self.len()?;
                Value::Buffer(self.take(n)?.to_vec())
            }
            STANDARD | CONTRACT => {
                let mut n = 21;
                if kind == CONTRACT {
                    let name_len = *self
                        .bytes
                        .get(self.at + 21)
                        .ok_or(ClarityError::Truncated(self.bytes.len()))?;
                    n += 1 + name_len as usize;
                }
                let body = self.take(n)?;
                let whole = &self.bytes[at..at + 1 + body.len()];
                Value::Principal(
                    Principal::deserialize(whole)
                        .map_err(|e| ClarityError::Principal(e.to_string()))?,
                )
            }
            OK => Value::ResponseOk(Box::new(self.value(depth + 1)?)),
            ERR => Value::ResponseErr(Box::new(self.value(depth + 1)?)),
            NONE => Value::None,
            SOME => Value::Some(Box::new(self.value(depth + 1)?)),
            LIST => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::List(items)
            }
            TUPLE => {
                let n = self.len()?;
                let mut fields = BTreeMap::new();
                let mut last: Option<String> = None;
                for _ in 0..n {
                    let name_len = self.byte()? as usize;
                    let name = std::str::from_utf8(self.take(name_len)?)
                        .map_err(|_| ClarityError::NotUtf8)?
                        .to_string();
                    if last.as_ref().is_some_and(|l| *l >= name) {
                        return Err(ClarityError::TupleOrder(name));
                    }
                    let v = self.value(depth + 1)?;
                    last = Some(name.clone());
                    fields.insert(name, v);
                }
                Value::Tuple(fields)
            }
            ASCII => {
                let n = self.len()?;
                let b = self.take(n)?;
                if !b
                    .iter()
                    .all(|c| c.is_ascii_graphic() || matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
                {
                    return Err(ClarityError::NotAscii);
                }
                Value::StringAscii(
                    String::from_utf8(b.to_vec()).map_err(|_| ClarityError::NotAscii)?,
                )
            }
            UTF8 => {
                let n = self.len()?;
                Value::StringUtf8(
                    String::from_utf8(self.take(n)?.to_vec()).map_err(|_| ClarityError::NotUtf8)?,
                )
            }
            byte => return Err(ClarityError::UnknownType { byte, at }),
        })
    }
}

impl fmt::Display for Value {
    /// Clarity's own notation, as `cvToString` in `@stacks/transactions` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "u{u}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Buffer(b) => write!(f, "0x{}", hex::encode(b)),
            Value::Principal(p) => write!(f, "{p}"),
            Value::ResponseOk(v) => write!(f, "(ok {v})"),
            Value::ResponseErr(v) => write!(f, "(err {v})"),
            Value::None => f.write_str("none"),
            Value::Some(v) => write!(f, "(some {v})"),
            Value::List(items) => {
                f.write_str("(list")?;
                for v in items {
                    write!(f, " {v}")?;
                }
                f.write_str(")")
            }
            Value::Tuple(fields) => {
                f.write_str("(tuple")?;
                for (k, v) in fields {
                    write!(f, " ({k} {v})")?;
                }
                f.write_str(")")
            }
            Value::StringAscii(s) => write!(f, "\"{s}\""),
            Value::StringUtf8(s) => write!(f, "u\"{s}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_bytes_are_errors_not_panics_or_big_allocations() {
        // A list claiming 4 billion items in 5 bytes.
        assert!(matches!(
            Value::deserialize(&[LIST, 0xff, 0xff, 0xff, 0xff]),
            Err(ClarityError::Truncated(_))
        ));
        // 40 nested `some`s.
        let mut deep = vec![SOME; 40];
        deep.push(NONE);
        assert_eq!(Value::deserialize(&deep), Err(ClarityError::TooDeep));
        // Tuple names out of order.
        let bad = [TUPLE, 0, 0, 0, 2, 1, b'b', NONE, 1, b'a', NONE];
        assert_eq!(
            Value::deserialize(&bad),
            Err(ClarityError::TupleOrder("a".into()))
        );
        assert_eq!(
            Value::deserialize(&[NONE, 0]),
            Err(ClarityError::Trailing(1))
        );
        assert!(matches!(
            Value::deserialize(&[0x42]),
            Err(ClarityError::UnknownType { byte: 0x42, at: 0 })
        ));
        assert_eq!(
            Value::deserialize(&[ASCII, 0, 0, 0, 1, 0x01]),
            Err(ClarityError::NotAscii)
        );
        assert_eq!(
            Value::deserialize(&[UTF8, 0, 0, 0, 1, 0xff]),
            Err(ClarityError::NotUtf8)
        );
    }

    #[test]
    fn values_round_trip() {
        let p = Principal::from_address("SM3VDXK3WZZSA84XXFKAFAF15NNZX32CTSG82JFQ4.sbtc-registry")
            .unwrap();
        let v = Value::tuple([
            ("amount", Value::UInt(u128::MAX)),
            ("delta", Value::Int(-5)),
            ("who", Value::Principal(p)),
            (
                "items",
                Value::List(vec![
                    Value::ok(Value::Bool(true)),
                    Value::err(Value::None),
                    Value::some(Value::Buffer(vec![1, 2, 3])),
                ]),
            ),
            ("memo", Value::StringAscii("hi there".into())),
            ("name", Value::StringUtf8("sBTC \u{20bf}".into())),
        ]);
        let bytes = v.serialize();
        assert_eq!(Value::deserialize(&bytes).unwrap(), v);
        assert_eq!(Value::from_hex(&v.to_hex()).unwrap(), v);
    }
}
