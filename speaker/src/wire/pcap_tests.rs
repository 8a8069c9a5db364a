//! An outside opinion on the golden frames: write them to a pcap file and let tcpdump decode
//! them. tcpdump checks the ICMPv6 checksums itself ("icmp6 sum ok"). Skipped, with a note,
//! where tcpdump is not installed.

use std::process::Command;

use super::arp::tests::{
    GRATUITOUS_REPLY_FRAME, GRATUITOUS_REQUEST_FRAME, REPLY_FRAME, REQUEST_FRAME,
};
use super::ndp::tests::{
    DAD_NS_FRAME, NS_FRAME, NUD_NS_FRAME, SOLICITED_NA_FRAME, UNSOLICITED_NA_FRAME,
};

/// A classic pcap file (microsecond timestamps, LINKTYPE_ETHERNET) holding `frames`.
fn pcap(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, little-endian file
    out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // GMT offset
    out.extend_from_slice(&0u32.to_le_bytes()); // timestamp accuracy
    out.extend_from_slice(&65535u32.to_le_bytes()); // snap length
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).unwrap();
        out.extend_from_slice(&u32::try_from(i).unwrap().to_le_bytes()); // seconds
        out.extend_from_slice(&0u32.to_le_bytes()); // microseconds
        out.extend_from_slice(&len.to_le_bytes()); // captured length
        out.extend_from_slice(&len.to_le_bytes()); // original length
        out.extend_from_slice(frame);
    }
    out
}

#[test]
fn tcpdump_decodes_the_golden_frames() {
    let frames: [&[u8]; 9] = [
        &REQUEST_FRAME,
        &REPLY_FRAME,
        &GRATUITOUS_REQUEST_FRAME,
        &GRATUITOUS_REPLY_FRAME,
        &NS_FRAME,
        &SOLICITED_NA_FRAME,
        &NUD_NS_FRAME,
        &DAD_NS_FRAME,
        &UNSOLICITED_NA_FRAME,
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("golden.pcap");
    std::fs::write(&path, pcap(&frames)).unwrap();
    let output = match Command::new("tcpdump")
        .args(["-n", "-e", "-vvv", "-tt", "-r"])
        .arg(&path)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("tcpdump not runnable ({e}); golden frames not cross-checked");
            return;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tcpdump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A packet's decode starts with an unindented (timestamp) line; continuations are indented.
    let mut packets: Vec<String> = Vec::new();
    for line in text.lines() {
        match packets.last_mut() {
            Some(packet) if line.starts_with(char::is_whitespace) => {
                packet.push('\n');
                packet.push_str(line);
            }
            _ => packets.push(line.to_owned()),
        }
    }
    let expect: [&[&str]; 9] = [
        &["Request who-has 192.168.10.200 tell 192.168.10.1"],
        &["Reply 192.168.10.200 is-at 52:54:00:00:00:aa"],
        &[
            "ff:ff:ff:ff:ff:ff",
            "Request who-has 192.168.10.200 tell 192.168.10.200",
        ],
        &[
            "ff:ff:ff:ff:ff:ff",
            "Reply 192.168.10.200 is-at 52:54:00:00:00:aa",
        ],
        &[
            "hlim 255",
            "icmp6 sum ok",
            "neighbor solicitation",
            "who has 2001:db8:10::c8",
            "source link-address option",
            "52:54:00:00:00:01",
        ],
        &[
            "hlim 255",
            "icmp6 sum ok",
            "neighbor advertisement",
            "tgt is 2001:db8:10::c8",
            "Flags [solicited, override]",
            "52:54:00:00:00:aa",
        ],
        &[
            "icmp6 sum ok",
            "neighbor solicitation",
            "2001:db8:10::1 > 2001:db8:10::c8",
        ],
        &[
            "icmp6 sum ok",
            "neighbor solicitation",
            ":: > ff02::1:ff00:c8",
        ],
        &[
            "icmp6 sum ok",
            "neighbor advertisement",
            "Flags [override]",
            "2001:db8:10::c8 > ff02::1",
        ],
    ];
    assert_eq!(packets.len(), expect.len(), "tcpdump output:\n{text}");
    for (i, (packet, wanted)) in packets.iter().zip(expect).enumerate() {
        for w in wanted {
            assert!(
                packet.contains(w),
                "packet {i}: {w:?} missing from tcpdump's decode:\n{packet}"
            );
        }
    }
    eprintln!("{text}");
}
