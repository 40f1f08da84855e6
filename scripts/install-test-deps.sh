#!/usr/bin/env bash
# Install what the test suite needs on a Debian machine (idempotent; fast when everything is present):
# Debian packages for the real peers, then the npm packages of the web client and the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES="haproxy patroni etcd-server docker.io debootstrap iproute2 xrdp xorgxrdp freerdp2-x11 freerdp2-shadow-x11 winpr-utils openssl openssh-server openssh-client sshpass postgresql-15 postgresql-client-15 chromium fonts-dejavu-core curl procps ca-certificates nodejs npm tigervnc-standalone-server tigervnc-tools x11-xserver-utils x11vnc xvfb xterm xfonts-base xdotool xclip imagemagick python3-tk x11-utils slapd ldap-utils rsyslog rsyslog-openssl prometheus gnuplot-nox asciinema"

missing=()
for p in $DEB_PACKAGES; do
  if [ "$p" = nodejs ] || [ "$p" = npm ]; then
    # A Node.js from elsewhere (e.g. the machine's own) is fine.
    command -v "${p/nodejs/node}" >/dev/null 2>&1 && continue
  fi
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing packages needs root (the tests also need root to create a local user)" >&2
    exit 1
  fi
  # Keep package scripts from starting sshd/postgres system-wide.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends install "${missing[@]}"
else
  echo "== Debian packages present"
fi

npm_install() {
  local dir=$1
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    echo "== npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$dir/node_modules"
  else
    echo "== npm packages present in $dir"
  fi
}
npm_install web-client
npm_install tests/browser
