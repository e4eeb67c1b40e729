#!/usr/bin/env bash
# Install what podling needs on Debian 12, as root: system packages, then a virtualenv
# in .venv with podling and (with --test) the test tools. Safe to run again: it only
# installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(runc crun conmon containernetworking-plugins iptables iproute2 catatonit zstd
          busybox-static python3-venv)
# containerd: its `ctr` is the tests' Go gRPC client (tests/integration/test_rpc_go_client.py)
TEST_PACKAGES=(docker-registry apache2-utils runsc openssl qemu-system-x86 linux-image-amd64
               containerd)
want=("${PACKAGES[@]}")
[[ "${1:-}" == "--test" ]] && want+=("${TEST_PACKAGES[@]}")

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
extra=""
[[ "${1:-}" == "--test" ]] && extra="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extra}"
