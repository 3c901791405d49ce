#!/usr/bin/env bash
# Builds the Debian package of tern with cargo-deb:
#
#   scripts/deb.sh            # -> target/debian/tern_VERSION-1_ARCH.deb
#
# The package holds /usr/bin/tern, /etc/tern/tern.toml (a conffile: this
# machine only), the systemd unit `tern` (hardened; reload = SIGHUP), the
# `tern` system user and /var/lib/tern, and the man pages generated from the
# command line. Its metadata is [package.metadata.deb] in crates/tern/Cargo.toml,
# its scripts and unit are in packaging/. Installs cargo-deb if it is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARGO_DEB_VERSION=3.8.0

if ! cargo deb --version >/dev/null 2>&1; then
    echo "+ cargo install cargo-deb --locked --version $CARGO_DEB_VERSION" >&2
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
echo "+ cargo build --release --bin tern" >&2
cargo build --release --bin tern
rm -rf target/release/man
echo "+ target/release/tern man target/release/man" >&2
target/release/tern man target/release/man
gzip -9n target/release/man/*.1   # Debian policy: man pages compressed
echo "+ cargo deb -p tern --no-build" >&2
cargo deb -p tern --no-build "$@"
