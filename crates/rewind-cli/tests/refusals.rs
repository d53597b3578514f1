//! What a user sees when an export is refused, through the real clients. qemu-img and
//! qemu-io print the server's reason ("server reported: ..."); libnbd's nbdinfo and nbdfuse
//! print the errno the reply code stands for (No such file or directory for
//! NBD_REP_ERR_UNKNOWN, Invalid argument for NBD_REP_ERR_INVALID) and the reason only with
//! LIBNBD_DEBUG=1; the server's log says the reason too.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

/// What the refusal is, as the NBD reply code says it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Code {
    /// NBD_REP_ERR_UNKNOWN: no such export or point is kept.
    Unknown,
    /// NBD_REP_ERR_INVALID: not a point, or one that has not happened.
    Invalid,
}

impl Code {
    /// How qemu names the code.
    fn qemu(self) -> &'static str {
        match self {
            Code::Unknown => "Requested export not available",
            Code::Invalid => "Invalid parameters for option 7 (go)",
        }
    }
    /// The errno libnbd makes of it.
    fn strerror(self) -> &'static str {
        match self {
            Code::Unknown => "No such file or directory",
            Code::Invalid => "Invalid argument",
        }
    }
}

/// Every kind of refusal: the export, its code, and how the reason starts.
const CASES: [(&str, Code, &str); 6] = [
    (
        "nosuch",
        Code::Unknown,
        "no export named \"nosuch\": exports are 'live' and '@POINT'",
    ),
    ("@nosuch", Code::Unknown, "no snapshot named \"nosuch\""),
    ("@-3650d", Code::Unknown, "point "),
    (
        "@seq:abc",
        Code::Invalid,
        "cannot understand point \"seq:abc\"",
    ),
    (
        "@2099-01-01T00:00:00Z",
        Code::Invalid,
        "point 2099-01-01T00:00:00Z is in the future (now is ",
    ),
    (
        "@seq:999999",
        Code::Invalid,
        "point seq:999999 is after the newest record (seq:0)",
    ),
];

/// The stderr of a command that must fail.
fn fails(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let o = run_timeout(cmd, CMD_TIMEOUT);
    assert!(!o.status.success(), "{desc} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The reason as the server sent it, from the line that holds it, checked to start as
/// `reason` does (and not wrapped in "no export named ..." as it was).
fn reason_in<'a>(text: &'a str, marker: &str, reason: &str, what: &str) -> &'a str {
    let line = text
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, r)| r))
        .unwrap_or_else(|| panic!("{what}: no {marker:?} in:\n{text}"));
    assert!(
        line.starts_with(reason),
        "{what}: the reason should start {reason:?}:\n{text}"
    );
    line
}

#[test]
fn qemu_prints_the_reason_and_the_kind_of_refusal() {
    if !have(&["qemu-img", "qemu-io"]) {
        return;
    }
    let (vol, _) = Vol::new(4 << 20, None);
    let _server = vol.serve();
    for (export, code, reason) in CASES {
        let info = fails(Command::new("qemu-img").arg("info").arg(vol.uri(export)));
        assert!(info.contains(code.qemu()), "qemu-img {export}:\n{info}");
        let got = reason_in(&info, "server reported: ", reason, export);
        if export == "@-3650d" {
            assert!(
                got.contains(" is before the base image (oldest point ") && got.contains("@seq:0"),
                "{got}"
            );
        }
        let io = fails(
            Command::new("qemu-io")
                .args(["-r", "-f", "raw", "-c", "read 0 512"])
                .arg(vol.uri(export)),
        );
        assert!(io.contains(code.qemu()), "qemu-io {export}:\n{io}");
        reason_in(&io, "server reported: ", reason, export);
    }
}

#[test]
fn libnbd_tools_print_the_kind_and_the_reason_when_debugging_and_the_log_has_it() {
    if !have(&["nbdinfo", "nbdfuse"]) {
        return;
    }
    let (vol, _) = Vol::new(4 << 20, None);
    let server = vol.serve();
    let mountpoint = vol.path("disk");
    std::fs::File::create(&mountpoint).unwrap();
    for (export, code, reason) in CASES {
        let info = fails(Command::new("nbdinfo").arg(vol.uri(export)));
        assert!(
            info.contains(code.strerror()) && info.contains(export),
            "nbdinfo {export}:\n{info}"
        );
        let debug = fails(
            Command::new("nbdinfo")
                .env("LIBNBD_DEBUG", "1")
                .arg(vol.uri(export)),
        );
        reason_in(&debug, "server error message: ", reason, export);
        // nbdfuse connects before it mounts: the refusal comes first.
        let fuse = fails(
            Command::new("nbdfuse")
                .arg("-r")
                .arg(&mountpoint)
                .arg(vol.uri(export)),
        );
        assert!(fuse.contains(code.strerror()), "nbdfuse {export}:\n{fuse}");
    }
    let log = server.log_text();
    for (export, _, reason) in CASES {
        let line = log
            .lines()
            .find(|l| l.contains("export refused") && l.contains(&format!("{export:?}")))
            .unwrap_or_else(|| panic!("no refusal of {export} logged:\n{log}"));
        assert!(line.contains(reason), "{line}");
    }
}
