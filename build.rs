//! An opt-in link layout for the container image's static binary, and nothing
//! else: a default `cargo build --release` gets no link option from here, so
//! it runs on every glibc from 2.34 on (Debian 12, Ubuntu 22.04, RHEL 9,
//! Amazon Linux 2023).
//!
//! With `TOKENGATE_LINK_LAYOUT=on` (set by `scripts/image` and
//! `deploy/Dockerfile`), a release build of the crt-static binary for
//! x86_64-unknown-linux-gnu, linked by LLD, gets:
//!
//! - `--symbol-ordering-file=deploy/symbol-order.txt`: the functions a
//!   running server executes (from a profile: `scripts/symbol-order`) laid out
//!   together, so fewer pages of code become resident. Names missing from the
//!   binary (a stale file) are skipped by the linker: the layout degrades, the
//!   program does not change.
//! - `-z pack-relative-relocs` (DT_RELR): relative relocations in a compact
//!   table. A dynamically linked binary would then need glibc 2.36 at run
//!   time; the static binary carries its own C library, so it only affects the
//!   image.
//!
//! Anything else (another target, a dynamic binary, a linker chosen in
//! RUSTFLAGS, a compiler before 1.90, whose default linker is not LLD): a
//! warning, and no option.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=deploy/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=TOKENGATE_LINK_LAYOUT");

    if env::var("TOKENGATE_LINK_LAYOUT").as_deref() != Ok("on") {
        return;
    }
    if env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    let skip = |why: &str| println!("cargo:warning=TOKENGATE_LINK_LAYOUT=on ignored: {why}");
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return skip("the layout is for x86_64-unknown-linux-gnu");
    }
    let statik =
        env::var("CARGO_CFG_TARGET_FEATURE").is_ok_and(|f| f.split(',').any(|f| f == "crt-static"));
    if !statik {
        return skip("the layout is for the static binary (-C target-feature=+crt-static)");
    }
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if rustflags.contains("linker") || rustflags.contains("fuse-ld") {
        return skip("RUSTFLAGS chooses a linker");
    }
    if !rustc_uses_lld_by_default() {
        return skip("the compiler's default linker is not LLD (rustc 1.90 or newer)");
    }
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = format!("{dir}/deploy/symbol-order.txt");
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
