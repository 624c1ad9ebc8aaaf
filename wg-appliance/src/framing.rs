//! Framing of the fixed-size messages, shared by `noise` and `cookie`: exact
//! length, type byte and zero reserved bytes, checked before any cryptography.

/// Why a fixed-size message was refused before any cryptography. The
/// handshake reports these as the same-named [`crate::noise::NoiseError`]
/// variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("{what} is {got} bytes; WireGuard requires exactly {expected} (drop it: truncated, padded or not WireGuard)")]
    WrongLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("message type {got} where type {expected} was expected (the caller dispatched on the wrong type byte)")]
    WrongType { expected: u8, got: u8 },
    #[error("the three reserved header bytes are not zero (not a WireGuard message; drop it)")]
    ReservedNotZero,
}

/// `b` as a message of exactly `N` bytes.
pub(crate) fn fixed<'a, const N: usize>(
    b: &'a [u8],
    what: &'static str,
) -> Result<&'a [u8; N], FramingError> {
    b.try_into().map_err(|_| FramingError::WrongLength {
        what,
        expected: N,
        got: b.len(),
    })
}

/// Check length, type and reserved bytes of a message of fixed size `N`.
pub(crate) fn expect_fixed<'a, const N: usize>(
    b: &'a [u8],
    ty: u8,
    what: &'static str,
) -> Result<&'a [u8; N], FramingError> {
    let m: &[u8; N] = fixed(b, what)?;
    if m[0] != ty {
        return Err(FramingError::WrongType {
            expected: ty,
            got: m[0],
        });
    }
    if m[1..4] != [0, 0, 0] {
        return Err(FramingError::ReservedNotZero);
    }
    Ok(m)
}
