#!/usr/bin/env bash
# The one test command: installs every system tool the tests need (apt-get update first),
# then runs cargo fmt --check, clippy -D warnings and every test in the workspace.
# Works on a fresh Debian/Ubuntu machine with a Rust toolchain; run it from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients the integration tests drive. Keep this list in step with the tests.
PACKAGES=(qemu-utils libnbd-bin nbdkit fio fuse3 e2fsprogs)

step() { printf '\n==> %s\n' "$*"; }

need_install=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_install+=("$p")
done
if [ "${#need_install[@]}" -gt 0 ] || [ "${CI:-}" = "true" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  step "apt-get update && install ${PACKAGES[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
# In CI a test that needs a missing tool fails instead of skipping (see REWIND_REQUIRE_TOOLS).
export REWIND_REQUIRE_TOOLS="${CI:-}"
cargo test --workspace --locked
