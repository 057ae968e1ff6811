//! Link settings for the release binary that cut its resident memory (issue 11: idle RSS).
//!
//! - `--symbol-ordering-file=src/symbol-order.txt` (`symbol-order-static.txt`
//!   for the container image's crt-static binary): the functions a running server executes
//!   (start-up and the request paths, from a profile: `scripts/symbol-order`) are laid out
//!   together, hottest first. The kernel maps code in 64 KiB windows around each touched page,
//!   so scattered functions made ~2.5 MiB of text resident; packed, ~1 MiB. Names missing from
//!   the binary (a stale file) are skipped by the linker: the layout degrades, the program does
//!   not change.
//! - `-z pack-relative-relocs` (DT_RELR): the position-independent executable's relative
//!   relocations in a compact table (~2 KiB instead of ~200 KiB that the dynamic loader reads
//!   at every start). Needs glibc 2.36 or newer at run time (Debian 12, Ubuntu 22.10).
//!
//! Both are linker options of LLD, which rustc uses by default for x86_64-unknown-linux-gnu
//! since 1.90; elsewhere (another target, an older compiler, a linker chosen in RUSTFLAGS) or
//! with `TOKENGATE_LINK_LAYOUT=off`, nothing is added.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/symbol-order.txt");
    println!("cargo:rerun-if-changed=src/symbol-order-static.txt");
    println!("cargo:rerun-if-env-changed=TOKENGATE_LINK_LAYOUT");

    if env::var("TOKENGATE_LINK_LAYOUT").is_ok_and(|v| v == "off") {
        return;
    }
    if env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return;
    }
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if rustflags.contains("linker") || rustflags.contains("fuse-ld") {
        return;
    }
    if !rustc_uses_lld_by_default() {
        return;
    }
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    // The container image's static binary (crt-static) has other symbol
    // names (other flags, other metadata hashes), so a profile of its own.
    let statik =
        env::var("CARGO_CFG_TARGET_FEATURE").is_ok_and(|f| f.split(',').any(|f| f == "crt-static"));
    let order = if statik {
        format!("{dir}/src/symbol-order-static.txt")
    } else {
        format!("{dir}/src/symbol-order.txt")
    };
    if std::path::Path::new(&order).is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={order}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}

/// rustc 1.90 or newer (self-contained LLD is the default linker on x86_64-unknown-linux-gnu).
fn rustc_uses_lld_by_default() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let mut numbers = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (1, 90)
}
