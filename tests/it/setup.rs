//! The project's own set-up scripts, run against fake file systems.

use std::path::Path;
use std::process::Command;

/// `scripts/find-libclang.sh ROOT`: the path it prints, or `None` when it finds no libclang.
fn find_libclang(root: &Path) -> Option<String> {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/find-libclang.sh"
    ))
    .arg(root)
    .env_remove("LIBCLANG_PATH")
    .output()
    .expect("run find-libclang.sh");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fake_root(files: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tmp");
    for f in files {
        let p = root.path().join(f.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"").expect("write");
    }
    root
}

/// A machine with LLVM's C++ interface (`libclang-cpp`) but not libclang itself must install
/// libclang-dev: bindgen cannot load libclang-cpp, and RocksDB's build failed on such a machine
/// when the old check took one for the other.
#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let root = fake_root(&[
        "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14",
        "/usr/lib/llvm-14/lib/libclang-cpp.so.14",
        "/usr/lib/llvm-14/lib/libclangAST.a",
    ]);
    assert_eq!(find_libclang(root.path()), None);
}

/// Where Debian's libclang packages put the library, it is found.
#[test]
fn libclang_is_found_where_debian_installs_it() {
    for file in [
        "/usr/lib/llvm-14/lib/libclang.so.1",
        "/usr/lib/llvm-16/lib/libclang-16.so.16",
        "/usr/lib/x86_64-linux-gnu/libclang-14.so.1",
        "/usr/lib/aarch64-linux-gnu/libclang-16.so.1",
    ] {
        let root = fake_root(&[file, "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14"]);
        let found = find_libclang(root.path());
        assert_eq!(
            found.as_deref(),
            Some(root.path().join(&file[1..]).to_str().expect("utf-8")),
            "{file}"
        );
    }
}
