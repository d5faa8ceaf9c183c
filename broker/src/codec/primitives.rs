//! The data types of the MQTT wire format (spec 1.5): integers, variable byte integers,
//! UTF-8 strings, binary data. Decoding reads from a `Bytes` so binary fields are slices
//! of the input, not copies.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};

/// Largest value of a variable byte integer (and so of a remaining length).
pub const VARINT_MAX: u32 = 268_435_455;

/// A UTF-8 string that shares the packet buffer (used where copies would be on the hot path:
/// topic names). Constructed only from validated bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Validates `b` as an MQTT UTF-8 string (well-formed, no U+0000).
    pub fn from_bytes(b: Bytes) -> Result<ByteStr, DecodeError> {
        check_utf8(&b)?;
        Ok(ByteStr(b))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validated the bytes as UTF-8 and `Bytes` is immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes (for zero-copy re-encoding).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(Bytes::from(s))
    }
}

impl std::ops::Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ByteStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// MQTT strings are well-formed UTF-8 without U+0000 [MQTT-1.5.4-1, MQTT-1.5.4-2].
/// (Rust's UTF-8 check already refuses the UTF-16 surrogates the spec forbids.)
pub(crate) fn check_utf8(b: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(b).map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))?;
    if s.contains('\0') {
        return Err(DecodeError::Malformed("string contains U+0000"));
    }
    Ok(s)
}

/// A cursor over one packet's bytes.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

const EARLY: DecodeError = DecodeError::Malformed("packet ends before its fields do");

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self.buf.get(self.pos).ok_or(EARLY)?;
        self.pos += 1;
        Ok(v)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.buf.get(self.pos..self.pos + 2).ok_or(EARLY)?;
        self.pos += 2;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.buf.get(self.pos..self.pos + 4).ok_or(EARLY)?;
        self.pos += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(&self.buf[self.pos..])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(EARLY),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(EARLY);
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    pub(crate) fn byte_str(&mut self) -> Result<ByteStr, DecodeError> {
        ByteStr::from_bytes(self.binary()?)
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.binary()?;
        Ok(check_utf8(&b)?.to_owned())
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }

    /// Fails if bytes are left over: the remaining length promised more than the fields hold.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::Malformed("packet is longer than its fields"));
        }
        Ok(())
    }
}

/// Reads a variable byte integer from the start of `b`: `Ok(None)` if more bytes are needed,
/// an error if it runs over four bytes [MQTT-1.5.5-1].
pub(crate) fn read_varint(b: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for i in 0..4 {
        let Some(&byte) = b.get(i) else { return Ok(None) };
        value |= ((byte & 0x7f) as u32) << (7 * i);
        if byte & 0x80 == 0 {
            // A non-minimal encoding (e.g. 0x80 0x00) is allowed by the grammar; accept it.
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed("variable byte integer longer than four bytes"))
}

/// Bytes a variable byte integer of `v` takes.
pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut BytesMut, mut v: u32) -> Result<(), EncodeError> {
    if v > VARINT_MAX {
        return Err(EncodeError::TooLarge("variable byte integer"));
    }
    loop {
        let mut byte = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            return Ok(());
        }
    }
}

pub(crate) fn put_binary(out: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::TooLarge("string or binary field"))?;
    out.put_u16(n);
    out.put_slice(b);
    Ok(())
}

/// Encoded size of a string or binary field.
pub(crate) fn binary_len(b: &[u8]) -> usize {
    2 + b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        for (v, bytes) in [
            (0u32, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (VARINT_MAX, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v).unwrap();
            assert_eq!(&out[..], &bytes[..], "{v}");
            assert_eq!(varint_len(v), bytes.len());
            assert_eq!(read_varint(&bytes).unwrap(), Some((v, bytes.len())));
            assert_eq!(read_varint(&bytes[..bytes.len() - 1]).unwrap(), None);
        }
        assert!(put_varint(&mut BytesMut::new(), VARINT_MAX + 1).is_err());
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        assert!(check_utf8(b"a\0b").is_err());
        assert!(check_utf8(&[0xed, 0xa0, 0x80]).is_err(), "UTF-16 surrogate");
        assert!(check_utf8(&[0xc3]).is_err());
        assert_eq!(check_utf8("héllo".as_bytes()).unwrap(), "héllo");
    }
}
