//! Responders: the I/O side of ARP and NDP. The codecs are in [`crate::wire`]; the raw
//! socket in [`sys`].

pub mod arp;
pub mod ndp;
pub mod sys;
