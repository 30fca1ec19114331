#!/usr/bin/env bash
# Installs the real services the integration tests start on loopback (etcd, PostgreSQL)
# the headless browser the report test opens (Chromium) and openssl (the TLS tests' CA),
# when they are missing. Idempotent; needs root or sudo (CI runs as root).
set -euo pipefail
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v prometheus >/dev/null || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v openssl >/dev/null || missing+=(openssl)  # the TLS tests' throwaway CA
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing system packages for the integration tests: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged services; the tests start their own on free ports.
$SUDO systemctl disable --now etcd postgresql prometheus >/dev/null 2>&1 || true
$SUDO service postgresql stop >/dev/null 2>&1 || true
$SUDO pkill -x etcd >/dev/null 2>&1 || true
