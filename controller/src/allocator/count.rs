//! Exact address counts: a pool can hold up to 2^128 addresses (`::/0`), one more than a
//! `u128` can count, so counts carry one extra bit.

use std::fmt;

/// A count in `[0, 2^129)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count {
    hi: bool,
    lo: u128,
}

impl Count {
    pub const ZERO: Count = Count { hi: false, lo: 0 };

    pub fn from_u128(n: u128) -> Count {
        Count { hi: false, lo: n }
    }

    /// Adds `n`, saturating at the top (unreachable for real pools: blocks do not overlap).
    pub fn plus(self, n: u128) -> Count {
        match self.lo.overflowing_add(n) {
            (lo, false) => Count { hi: self.hi, lo },
            (lo, true) if !self.hi => Count { hi: true, lo },
            _ => Count {
                hi: true,
                lo: u128::MAX,
            },
        }
    }

    /// Adds `span + 1` (the size of a block whose last - first is `span`).
    pub fn add_block(self, span: u128) -> Count {
        self.plus(span).plus(1)
    }

    /// Subtracts `n`, saturating at zero.
    pub fn minus(self, n: u128) -> Count {
        match (self.hi, self.lo.checked_sub(n)) {
            (hi, Some(lo)) => Count { hi, lo },
            (true, None) => Count {
                hi: false,
                lo: self.lo.wrapping_sub(n),
            },
            (false, None) => Count::ZERO,
        }
    }

    /// As a `u128`, saturating at `u128::MAX` (only `::/0` is bigger).
    pub fn saturating_u128(self) -> u128 {
        if self.hi { u128::MAX } else { self.lo }
    }

    /// As a float, for metrics gauges (exact up to 2^53).
    pub fn as_f64(self) -> f64 {
        let hi = if self.hi { 2f64.powi(128) } else { 0.0 };
        hi + self.lo as f64
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.hi {
            return write!(f, "{}", self.lo);
        }
        // 2^128 + lo, in decimal, by schoolbook addition.
        const TWO_128: &str = "340282366920938463463374607431768211456";
        let a: Vec<u8> = TWO_128.bytes().rev().map(|b| b - b'0').collect();
        let b: Vec<u8> = self
            .lo
            .to_string()
            .bytes()
            .rev()
            .map(|b| b - b'0')
            .collect();
        let mut out = Vec::new();
        let mut carry = 0u8;
        for i in 0..a.len().max(b.len()) {
            let s = a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0) + carry;
            out.push(b'0' + s % 10);
            carry = s / 10;
        }
        if carry > 0 {
            out.push(b'0' + carry);
        }
        out.reverse();
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_past_u128() {
        let all_v6 = Count::ZERO.add_block(u128::MAX);
        assert_eq!(
            all_v6.to_string(),
            "340282366920938463463374607431768211456"
        );
        assert_eq!(
            all_v6.plus(5).to_string(),
            "340282366920938463463374607431768211461"
        );
        assert_eq!(all_v6.minus(1), Count::from_u128(u128::MAX));
        let slash64 = Count::ZERO.add_block(u128::from(u64::MAX));
        assert_eq!(slash64.to_string(), "18446744073709551616");
        assert_eq!(Count::from_u128(51).to_string(), "51");
        assert_eq!(Count::from_u128(3).minus(5), Count::ZERO);
        assert!(all_v6 > slash64);
    }
}
