//! Bounds-checked reads for the parsers. Every read past the end becomes
//! [`WireError::Truncated`] naming the layer, so no parser indexes a slice directly.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Mac, WireError};

#[derive(Debug)]
pub(super) struct Reader<'a> {
    layer: &'static str,
    total: usize,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(layer: &'static str, buf: &'a [u8]) -> Self {
        Reader {
            layer,
            total: buf.len(),
            rest: buf,
        }
    }

    fn truncated(&self, want: usize) -> WireError {
        let consumed = self.total - self.rest.len();
        WireError::Truncated {
            layer: self.layer,
            need: consumed.saturating_add(want),
            got: self.total,
        }
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated(N))?;
        self.rest = tail;
        Ok(*head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, WireError> {
        self.array::<1>().map(|[b]| b)
    }

    pub(super) fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    pub(super) fn mac(&mut self) -> Result<Mac, WireError> {
        self.array().map(Mac)
    }

    pub(super) fn ipv4(&mut self) -> Result<Ipv4Addr, WireError> {
        self.array::<4>().map(Ipv4Addr::from)
    }

    pub(super) fn ipv6(&mut self) -> Result<Ipv6Addr, WireError> {
        self.array::<16>().map(Ipv6Addr::from)
    }

    /// What has not been read yet.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.rest
    }
}
