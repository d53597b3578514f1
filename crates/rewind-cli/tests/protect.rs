//! Nothing writes the primary or the vault behind the server's back through rewind:
//! `restore --to` refuses the primary (by path, hard link or symlink), anything inside a
//! vault, a file a rewind process holds and another vault's primary; and one primary has
//! one protector: the primary lock (flock) and the stamp (`user.rewind.vault`) refuse a
//! second vault, a copy of the vault, and a second server.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;

fn rewind(args: &[&str]) -> Output {
    run_timeout(Command::new(BIN).args(args), CMD_TIMEOUT)
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn restore_to(vol: &Vol, to: &Path) -> Output {
    rewind(&[
        "restore",
        "--vault",
        vol.v(),
        "--at",
        "now",
        "--to",
        to.to_str().unwrap(),
        "--force",
    ])
}

/// `rewind serve` of `vault` on `primary`, expected to refuse; returns its output.
fn serve_refused(primary: &Path, vault: &Path, socket: &Path, extra: &[&str]) -> Output {
    let o = run_timeout(
        Command::new(BIN)
            .args(["serve", "--listen", "none", "--primary"])
            .arg(primary)
            .arg("--vault")
            .arg(vault)
            .arg("--socket")
            .arg(socket)
            .args(extra),
        Duration::from_secs(30),
    );
    assert!(!o.status.success(), "serve should refuse: {o:?}");
    o
}

fn copy_dir(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[test]
fn restore_to_refuses_the_primary_and_anything_in_a_vault() {
    let (vol, _) = Vol::new(4 * MIB, Some(3));
    let base = vol.vault.join("base/base.img");
    let base_before = std::fs::read(&base).unwrap();
    let primary_ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&vol.primary).unwrap().ino()
    };
    let _server = vol.serve();
    let link = vol.path("hard-link.img");
    std::fs::hard_link(&vol.primary, &link).unwrap();
    let sym = vol.path("sym-link.img");
    std::os::unix::fs::symlink(&vol.primary, &sym).unwrap();
    for to in [&vol.primary, &link, &sym] {
        let o = restore_to(&vol, to);
        assert_eq!(o.status.code(), Some(1), "{}: {o:?}", to.display());
        assert!(err(&o).contains("--in-place"), "{}", err(&o));
        assert!(err(&o).contains("is the primary"), "{}", err(&o));
    }
    // The server still writes the file that is the primary.
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&vol.primary).unwrap().ino(), primary_ino);
    }
    for to in [
        base.clone(),
        vol.vault.join("new.img"),
        vol.vault.join("log/x.img"),
    ] {
        let o = restore_to(&vol, &to);
        assert_eq!(o.status.code(), Some(1), "{}: {o:?}", to.display());
        assert!(err(&o).contains("inside the vault"), "{}", err(&o));
    }
    assert!(std::fs::read(&base).unwrap() == base_before, "base image");
    assert!(!vol.vault.join("new.img").exists());

    // Another vault's primary: held by its server, then (stopped) stamped.
    let (other, _) = Vol::new(4 * MIB, Some(4));
    let mut server = other.serve();
    let o = restore_to(&vol, &other.primary);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err(&o).contains("held by a running rewind process"),
        "{}",
        err(&o)
    );
    assert!(
        err(&o).contains(&format!("pid {}", server.pid())),
        "{}",
        err(&o)
    );
    server.stop("TERM", Duration::from_secs(30));
    let o = restore_to(&vol, &other.primary);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(err(&o).contains("is the primary of vault"), "{}", err(&o));
    // A plain file is fine, and so is a vault-looking name outside any vault.
    let ok = vol.path("restored.img");
    let o = restore_to(&vol, &ok);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn a_second_vault_on_a_protected_primary_is_refused_unless_taken_over() {
    let (vol, _) = Vol::new(4 * MIB, Some(5));
    let p = vol.primary.to_str().unwrap();
    let second = vol.path("second.vault");
    let s = second.to_str().unwrap();
    {
        // While a server protects it: the lock, naming the holder.
        let server = vol.serve();
        let o = rewind(&["init", "--primary", p, "--vault", s, "--take-over"]);
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        assert!(
            err(&o).contains(&format!("pid {}", server.pid())),
            "{}",
            err(&o)
        );
        assert!(err(&o).contains(vol.v()), "the holder's vault: {}", err(&o));
    }
    // Stopped: the stamp names the first vault.
    let o = rewind(&["init", "--primary", p, "--vault", s]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err(&o).contains("protected by another vault"),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("--take-over"), "{}", err(&o));
    assert!(!second.join("base").exists(), "nothing created");
    // Taken over: the second vault protects it, and the first is refused in turn.
    let o = rewind(&["init", "--primary", p, "--vault", s, "--take-over"]);
    assert!(o.status.success(), "{o:?}");
    assert!(err(&o).contains("took"), "{}", err(&o));
    let o = serve_refused(&vol.primary, &vol.vault, &vol.socket, &[]);
    assert!(
        err(&o).contains("protected by another vault"),
        "{}",
        err(&o)
    );
    let o = rewind(&["sync", "--vault", vol.v()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err(&o).contains("protected by another vault"),
        "{}",
        err(&o)
    );
    // A removed vault's stamp is stale: the first vault may protect it again.
    std::fs::remove_dir_all(&second).unwrap();
    let mut server = vol.serve();
    server.stop("TERM", Duration::from_secs(30));
    assert!(
        server.log_text().contains("no longer there"),
        "{}",
        server.log_text()
    );
}

#[test]
fn a_copied_vault_is_refused_and_a_moved_one_accepted() {
    let (vol, _) = Vol::new(4 * MIB, Some(6));
    let copy = vol.path("copy.vault");
    copy_dir(&vol.vault, &copy);
    let o = serve_refused(&vol.primary, &copy, &vol.path("c.sock"), &[]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(err(&o).contains("is a copy of"), "{}", err(&o));
    assert!(err(&o).contains("--take-over"), "{}", err(&o));
    {
        // Both at once: the lock.
        let _server = vol.serve();
        let o = serve_refused(&vol.primary, &copy, &vol.path("c.sock"), &["--take-over"]);
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        // Nor can an offline sync of the copy compare (and mark suspect) meanwhile.
        let o = rewind(&["sync", "--vault", copy.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        assert!(
            err(&o).contains("in use by another rewind process"),
            "{}",
            err(&o)
        );
    }
    // Moved: the old path holds nothing any more; the stamp follows.
    std::fs::remove_dir_all(&copy).unwrap();
    let moved = vol.path("moved.vault");
    std::fs::rename(&vol.vault, &moved).unwrap();
    let vol = Vol {
        vault: moved,
        ..vol
    };
    let mut server = vol.serve();
    server.stop("TERM", Duration::from_secs(30));
    assert!(
        server.log_text().contains("no longer there"),
        "{}",
        server.log_text()
    );
    // And the old original, brought back, is now the copy.
    let back = vol.dir.path().join("vault");
    copy_dir(&vol.vault, &back);
    let o = serve_refused(&vol.primary, &back, &vol.path("b.sock"), &[]);
    assert!(err(&o).contains("is a copy of"), "{}", err(&o));
}
