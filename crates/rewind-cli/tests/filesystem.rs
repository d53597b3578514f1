//! A real file system on a protected volume: ext4 made and mounted through nbdfuse and a
//! loop device, a snapshot of a file tree, then the tree changed on live. The snapshot
//! export mounts read-only with the first tree byte for byte, and e2fsck finds both the
//! snapshot and live clean.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
}

type Tree = BTreeMap<PathBuf, Entry>;

/// Everything under `root` except lost+found, as it is on disk.
fn read_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if rel == Path::new("lost+found") {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.insert(rel, Entry::Symlink(std::fs::read_link(&path).unwrap()));
            } else if ft.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &path, out);
            } else {
                out.insert(rel, Entry::File(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut t = Tree::new();
    walk(root, root, &mut t);
    t
}

fn assert_tree(got: &Tree, want: &Tree, what: &str) {
    let got_paths: Vec<_> = got.keys().collect();
    let want_paths: Vec<_> = want.keys().collect();
    assert_eq!(got_paths, want_paths, "{what}: paths differ");
    for (p, w) in want {
        match (&got[p], w) {
            (Entry::File(g), Entry::File(w)) => {
                assert_same(g, w, &format!("{what}: {}", p.display()))
            }
            (g, w) => assert_eq!(g, w, "{what}: {}", p.display()),
        }
    }
}

fn write_file(root: &Path, tree: &mut Tree, rel: &str, rng: &mut Rng, len: usize) {
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    std::fs::write(root.join(rel), &data).unwrap();
    tree.insert(PathBuf::from(rel), Entry::File(data));
}

fn mkdir(root: &Path, tree: &mut Tree, rel: &str) {
    std::fs::create_dir(root.join(rel)).unwrap();
    tree.insert(PathBuf::from(rel), Entry::Dir);
}

fn e2fsck_clean(image: &Path) {
    let o = run_timeout(Command::new("e2fsck").arg("-fn").arg(image), CMD_TIMEOUT);
    assert!(
        o.status.success(),
        "e2fsck -fn {} is not clean ({}):\n{}{}",
        image.display(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn can_mount() -> bool {
    need(is_root(), "not root: loop mounts need root")
        && need(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: nbdfuse needs FUSE",
        )
        && need(
            Command::new("losetup")
                .arg("-f")
                .output()
                .is_ok_and(|o| o.status.success()),
            "no free loop device (losetup -f)",
        )
}

#[test]
fn ext4_tree_snapshot_mounts_read_only_and_fscks_clean() {
    if !have(&[
        "nbdfuse",
        "fusermount3",
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
        "losetup",
        "qemu-img",
    ]) || !can_mount()
    {
        return;
    }
    let (vol, _) = Vol::new(128 << 20, None);
    let _server = vol.serve();
    let mut live = Fuse::mount(&vol.path("live.disk"), &vol.uri("live"), false);
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&live.file));

    // The first tree.
    let mnt = vol.path("mnt");
    let mut rng = Rng(0xf11e);
    let mut tree = Tree::new();
    {
        let mut m = Mount::new(&live.file, &mnt, "rw");
        let root = &m.dir;
        for d in [
            "etc",
            "etc/app",
            "home",
            "home/user",
            "home/user/docs",
            "var",
        ] {
            mkdir(root, &mut tree, d);
        }
        write_file(root, &mut tree, "etc/app/config", &mut rng, 1234);
        write_file(root, &mut tree, "etc/empty", &mut rng, 0);
        write_file(root, &mut tree, "home/user/one-byte", &mut rng, 1);
        write_file(root, &mut tree, "home/user/block", &mut rng, 4096);
        write_file(root, &mut tree, "home/user/docs/big", &mut rng, 3 << 20);
        write_file(root, &mut tree, "home/user/docs/odd", &mut rng, 100_003);
        write_file(root, &mut tree, "var/log", &mut rng, 70_000);
        for i in 0..20 {
            write_file(root, &mut tree, &format!("var/f{i}"), &mut rng, 500 * i + 1);
        }
        std::os::unix::fs::symlink("../etc/app/config", root.join("home/config")).unwrap();
        tree.insert(
            PathBuf::from("home/config"),
            Entry::Symlink(PathBuf::from("../etc/app/config")),
        );
        run_ok(&mut Command::new("sync"));
        assert_tree(&read_tree(root), &tree, "tree before unmount");
        m.unmount();
    }
    // Everything the file system wrote reached the server; make it durable too.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&live.file)
        .unwrap()
        .sync_all()
        .unwrap();
    vol.snapshot("tree1");

    // Change live: overwrite, delete, add.
    let tree2 = {
        let mut m = Mount::new(&live.file, &mnt, "rw");
        let root = &m.dir;
        let mut t2 = read_tree(root);
        assert_tree(&t2, &tree, "tree after remount");
        write_file(root, &mut t2, "etc/app/config", &mut rng, 999);
        write_file(root, &mut t2, "home/user/docs/big", &mut rng, 2 << 20);
        std::fs::remove_file(root.join("home/user/block")).unwrap();
        t2.remove(Path::new("home/user/block"));
        std::fs::remove_dir_all(root.join("var")).unwrap();
        t2.retain(|p, _| !p.starts_with("var"));
        mkdir(root, &mut t2, "new");
        write_file(root, &mut t2, "new/file", &mut rng, 50_000);
        run_ok(&mut Command::new("sync"));
        m.unmount();
        t2
    };
    live.unmount();

    // The snapshot, read-only: the first tree exactly.
    let mut snap = Fuse::mount(&vol.path("tree1.disk"), &vol.uri("@tree1"), true);
    {
        let mut m = Mount::new(&snap.file, &vol.path("mnt-tree1"), "ro,noload");
        assert_tree(&read_tree(&m.dir), &tree, "@tree1");
        m.unmount();
    }
    e2fsck_clean(&snap.file);

    // The same point restored from the vault is the same image.
    let restored = vol.path("tree1-restored.img");
    rewind_ok(&[
        "restore",
        "--vault",
        vol.v(),
        "--at",
        "tree1",
        "--to",
        restored.to_str().unwrap(),
    ]);
    qemu_compare(&restored, &snap.file);
    snap.unmount();

    // Live: the changed tree, and clean.
    let live = Fuse::mount(&vol.path("live2.disk"), &vol.uri("live"), false);
    e2fsck_clean(&live.file);
    {
        let mut m = Mount::new(&live.file, &mnt, "ro");
        assert_tree(&read_tree(&m.dir), &tree2, "live after changes");
        m.unmount();
    }
    drop(live);
    e2fsck_clean(&vol.primary);
}
