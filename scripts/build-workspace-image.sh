#!/usr/bin/env bash
# Build a Portico workspace image (Debian bookworm with Xvnc) without any container
# registry: debootstrap a minbase rootfs from the Debian mirror apt already uses, install
# the flavor's package list from scripts/workspace/, add the flavor's files from
# scripts/workspace/, and `docker import` the result. Flavors:
#   default  portico/workspace:latest: twm + xterm (packages; start-vnc, twmrc)
#   browser  portico/workspace-browser:latest: Chromium full-screen under matchbox, as a
#            secure browser (browser-packages; start-vnc, browser-session, chromium-policy.json,
#            start.html); the image also carries the label org.portico.workspace.flavor=browser
#
# usage: scripts/build-workspace-image.sh [--flavor default|browser]
#                                         [--docker-host unix:///path/docker.sock]
#                                         [--tag portico/workspace:latest]
#                                         [--cache-dir DIR] [--force] [--rootfs-only]
#
#   --flavor       which image (default: default)
#   --docker-host  daemon to import into (default: $DOCKER_HOST, else the docker default)
#   --tag          image tag (default: portico/workspace:latest, or
#                  portico/workspace-browser:latest for --flavor browser)
#   --cache-dir    where the rootfs tarball is cached
#                  (default: ${PORTICO_CACHE:-/var/cache/portico})
#   --force        rebuild the rootfs and re-import even if everything is up to date
#   --rootfs-only  only make sure the cached rootfs tarball exists (no Docker needed); the test
#                  command runs this first, so tests themselves only import from the cache
#
# Idempotent: the image carries the label org.portico.workspace.hash, a hash of the flavor's
# files in scripts/workspace/ and of this script. If the tagged image has the current hash the
# script exits at once ("image up to date"). Otherwise it imports the cached rootfs tarball
# <cache-dir>/workspace-rootfs-<flavor>-<hash>.tar (seconds) or builds it first (1-3 min for
# the default flavor, 2-4 min for the browser). That tarball only depends on the flavor's
# package list and this script; the other files are added at import time, so editing them
# costs a re-import, not a rebuild. The cache keeps the 3 most recently used tarballs of
# each flavor.
# Env: PORTICO_DEBIAN_MIRROR overrides the mirror (default: the first URIs: of
# /etc/apt/sources.list.d/debian.sources).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
WS_DIR=$(dirname "$SELF")/workspace
SUITE=bookworm
FLAVOR=default
TAG=
CACHE_DIR=${PORTICO_CACHE:-/var/cache/portico}
FORCE=0
ROOTFS_ONLY=0
LABEL_KEY=org.portico.workspace.hash

die() { echo "build-workspace-image: error: $*" >&2; exit 1; }
say() { echo "== $*"; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }

while [ $# -gt 0 ]; do
  case $1 in
    --docker-host) [ $# -ge 2 ] || die "--docker-host needs a value"; export DOCKER_HOST=$2; shift 2 ;;
    --docker-host=*) export DOCKER_HOST=${1#*=}; shift ;;
    --flavor) [ $# -ge 2 ] || die "--flavor needs a value"; FLAVOR=$2; shift 2 ;;
    --flavor=*) FLAVOR=${1#*=}; shift ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; TAG=$2; shift 2 ;;
    --tag=*) TAG=${1#*=}; shift ;;
    --cache-dir) [ $# -ge 2 ] || die "--cache-dir needs a value"; CACHE_DIR=$2; shift 2 ;;
    --cache-dir=*) CACHE_DIR=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    --rootfs-only) ROOTFS_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

# Per flavor: package list, default tag, image title, extra labels, and the files
# scripts/workspace/<file> -> path and mode in the image (added on top of the cached rootfs).
EXTRA_LABELS=()
case $FLAVOR in
  default)
    PACKAGES=packages
    DEFAULT_TAG=portico/workspace:latest
    TITLE="Portico workspace (Xvnc + twm + xterm, Debian bookworm)"
    WS_FILES=("start-vnc:/usr/local/bin/start-vnc:0755" "twmrc:/etc/portico/twmrc:0644"
      "pulse.pa:/etc/portico/pulse.pa:0644" "portico-audio:/usr/local/bin/portico-audio:0755"
      "pulse-client.conf:/etc/pulse/client.conf.d/portico.conf:0644")
    ;;
  browser)
    PACKAGES=browser-packages
    DEFAULT_TAG=portico/workspace-browser:latest
    TITLE="Portico secure browser workspace (Xvnc + Chromium, Debian bookworm)"
    EXTRA_LABELS=("org.portico.workspace.flavor=browser")
    WS_FILES=("start-vnc:/usr/local/bin/start-vnc:0755"
      "browser-session:/etc/portico/session:0755"
      "chromium-policy.json:/etc/chromium/policies/managed/portico.json:0644"
      "start.html:/usr/share/portico/start.html:0644"
      "pulse.pa:/etc/portico/pulse.pa:0644" "portico-audio:/usr/local/bin/portico-audio:0755"
      "pulse-client.conf:/etc/pulse/client.conf.d/portico.conf:0644")
    ;;
  *) die "unknown --flavor '$FLAVOR' (default or browser)" ;;
esac
TAG=${TAG:-$DEFAULT_TAG}

T_TOTAL=$(now)
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot and mount need it)"
[ -f "$WS_DIR/$PACKAGES" ] || die "missing $WS_DIR/$PACKAGES"
for spec in "${WS_FILES[@]}"; do
  [ -f "$WS_DIR/${spec%%:*}" ] || die "missing $WS_DIR/${spec%%:*}"
done
if [ "$ROOTFS_ONLY" -eq 0 ]; then
  command -v docker >/dev/null || die "the docker CLI is not installed (Debian: apt-get install docker.io)"
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "cannot reach the Docker daemon at ${DOCKER_HOST:-the default socket}: $(docker version 2>&1 | tail -n 1)"
fi

# ---- content hashes ----
sha() { sha256sum | cut -d' ' -f1; }
# The rootfs tarball: the flavor's package list and this script (which holds the recipe).
BASE_HASH=$(printf 'flavor %s\npackages %s\nscript %s\nsuite %s\narch %s\n' "$FLAVOR" \
  "$(sha < "$WS_DIR/$PACKAGES")" "$(sha < "$SELF")" "$SUITE" "$(dpkg --print-architecture)" | sha)
# The image: the rootfs plus the flavor's files (name, path and mode in the image, content).
HASH=$(
  printf 'base %s\n' "$BASE_HASH"
  for spec in "${WS_FILES[@]}"; do
    printf '%s %s\n' "$spec" "$(sha < "$WS_DIR/${spec%%:*}")"
  done | sha
)
HASH=$(printf '%s' "$HASH" | sha)
SHORT=${HASH:0:16}
TARBALL=$CACHE_DIR/workspace-rootfs-$FLAVOR-${BASE_HASH:0:16}.tar

image_hash() { [ "$ROOTFS_ONLY" -eq 1 ] || docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$TAG" 2>/dev/null || true; }

if [ "$FORCE" -eq 0 ] && [ "$(image_hash)" = "$HASH" ]; then
  echo "image up to date: $TAG (hash $SHORT, $(since "$T_TOTAL"))"
  exit 0
fi

mkdir -p "$CACHE_DIR"
# One build at a time per cache dir (parallel test runs may all call this script).
exec 9>"$CACHE_DIR/workspace-build.lock"
if ! flock -n 9; then
  say "waiting for another build-workspace-image run"
  flock -w 1800 9 || die "timed out waiting for $CACHE_DIR/workspace-build.lock"
  if [ "$FORCE" -eq 0 ] && [ "$(image_hash)" = "$HASH" ]; then
    echo "image up to date: $TAG (hash $SHORT, built by the other run)"
    exit 0
  fi
fi

WORK=
LOG=$CACHE_DIR/workspace-build.log
cleanup() {
  if [ -n "$WORK" ]; then
    if mountpoint -q "$WORK/rootfs/proc" 2>/dev/null; then
      umount "$WORK/rootfs/proc" || umount -l "$WORK/rootfs/proc" || true
    fi
    rm -rf --one-file-system "$WORK"
  fi
  rm -f "$TARBALL.tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Not /tmp for the work dir: that may be a nodev tmpfs, and debootstrap needs device nodes.
WORK=$(mktemp -d "$CACHE_DIR/build.XXXXXX")

# Run a build step, its output going to $LOG; on failure show the end of the log.
step() {
  local what=$1; shift
  if ! "$@" >>"$LOG" 2>&1; then
    echo "build-workspace-image: error: $what failed; last lines of $LOG:" >&2
    tail -n 25 "$LOG" >&2
    exit 1
  fi
}

# Delete files that hard dependencies pull in but nothing in this image runs (default flavor:
# ~280 MB of ~450 MB). dpkg still lists the packages; a derived image that needs them back runs
# `apt-get install --reinstall <package>` (list in /etc/portico/slimmed). Chromium (browser
# flavor) does not need Mesa's GL drivers either: it runs with --disable-gpu (software
# compositing), and it bundles its own ICU data.
slim_rootfs() {
  local R=$1 before after missing
  before=$(du -sxm "$R" | cut -f1)
  mkdir -p "$R/etc/portico"
  {
    cat <<'EOF'
# Removed from this image by scripts/build-workspace-image.sh (not used by Xvnc and the desktop
# session); restore with: apt-get install --reinstall <package>
# libgl1-mesa-dri libllvm15 libz3-4 libxml2 libicu72: Mesa GL drivers and their libraries
#   (Xvnc's GLX extension is then unavailable; Xvnc itself runs fine)
# cpp-12: the C preprocessor binary cc1 (only `xrdb` uses it; `xrdb -nocpp` still works)
# perl-modules-5.36 libperl5.36: full Perl (only the `vncserver` wrapper needs it; perl-base stays)
# libasound2-plugins libavcodec59 librsvg2-2: ALSA's A52 and libav rate plugins with their codec
#   library (PulseAudio depends on them; it plays into a null sink and never loads ALSA plugins)
# shared-mime-info: update-mime-database (a dpkg trigger tool, the last user of libxml2 here;
#   reinstall it after libxml2 before installing more packages)
EOF
    if [ "$FLAVOR" = browser ]; then
      cat <<'EOF'
# chromium: the Vulkan validation layer and mock driver in /usr/lib/chromium (debugging aids;
#   Chromium runs with --disable-gpu)
EOF
    fi
  } > "$R/etc/portico/slimmed"
  (
    cd "$R"
    rm -rf usr/lib/*-linux-gnu/dri usr/lib/*-linux-gnu/libLLVM-*.so* usr/lib/*-linux-gnu/libz3.so* \
      usr/lib/*-linux-gnu/libxml2.so* usr/lib/*-linux-gnu/libicu*.so* \
      usr/lib/gcc/*-linux-gnu/*/cc1 \
      usr/share/perl/5.* usr/lib/*-linux-gnu/perl/5.* usr/lib/*-linux-gnu/libperl.so* \
      usr/lib/*-linux-gnu/alsa-lib/libasound_module_pcm_a52.so \
      usr/lib/*-linux-gnu/alsa-lib/libasound_module_rate_lavrate*.so \
      usr/lib/*-linux-gnu/libavcodec.so* usr/lib/*-linux-gnu/librsvg-2.so* usr/bin/update-mime-database
    # The video codecs only libavcodec used (about 90 MB).
    for lib in libcodec2 libx265 libx264 libmfx libmfxhw64 libmfx-tracer libSvtAv1Enc libaom libjxl \
      libjxl_threads libhwy libhwy_contrib libhwy_test libvpx librav1e libzvbi libzvbi-chains \
      libshine libsnappy libgsm libtwolame libtheoraenc libtheoradec libxvidcore libva libva-drm \
      libva-x11 libvdpau libOpenCL libzimg libvpl libspeex libudfread libavutil libswresample; do
      rm -f usr/lib/*-linux-gnu/"$lib".so*
    done
    rm -rf usr/lib/*-linux-gnu/mfx
    if [ "$FLAVOR" = browser ]; then
      rm -f usr/lib/chromium/libVkLayer_khronos_validation.so* \
        usr/lib/chromium/libVkICD_mock_icd.so*
    fi
  )
  # Safety net: every remaining binary and library must still find its libraries.
  missing=$(chroot "$R" sh -c 'find /usr /etc /opt -xdev -type f \( -perm -u+x -o -name "*.so*" \) -print 2>/dev/null \
    | while read -r f; do ldd "$f" 2>/dev/null | sed -n "s|^\s*\(\S*\) => not found|$f: \1|p"; done' \
    | grep -v -E '^/usr/bin/perl5\.[0-9]' || true)
  [ -z "$missing" ] || die "slimming broke library dependencies:"$'\n'"$missing"
  after=$(du -sxm "$R" | cut -f1)
  echo "   slimmed rootfs: $before MB -> $after MB"
}

build_rootfs() {
  local mirror security R t pkgs valid_until=
  mirror=${PORTICO_DEBIAN_MIRROR:-}
  if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' || true)
  fi
  # The mirror is this machine's own (its apt sources), never a host named here.
  [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list*: set PORTICO_DEBIAN_MIRROR to one"
  security=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -o '[a-z]*://[^ ]*debian-security[^ ]*' | head -n 1 || true)

  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    step "apt-get install debootstrap" env DEBIAN_FRONTEND=noninteractive sh -c '
      apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends install debootstrap \
      || { apt-get -o DPkg::Lock::Timeout=600 update &&
           apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends install debootstrap; }'
  fi

  R=$WORK/rootfs
  t=$(now)
  say "debootstrap --variant=minbase $SUITE from $mirror (log: $LOG)"
  step debootstrap debootstrap --variant=minbase "$SUITE" "$R" "$mirror"
  echo "   debootstrap: $(since "$t")"

  t=$(now)
  # No docs, man pages or translations; no recommends; no services started by maintainer scripts.
  cat > "$R/etc/dpkg/dpkg.cfg.d/01-portico-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/linda/*
EOF
  cat > "$R/etc/apt/apt.conf.d/01-portico" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
  # Follow the host on Valid-Until (snapshot mirrors have expired Release files).
  eval "$(apt-config shell valid_until Acquire::Check-Valid-Until)"
  if [ "$valid_until" = false ]; then
    echo 'Acquire::Check-Valid-Until "false";' > "$R/etc/apt/apt.conf.d/02-portico-build"
  fi
  printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"
  chmod 0755 "$R/usr/sbin/policy-rc.d"
  {
    echo "deb $mirror $SUITE main"
    echo "deb $mirror $SUITE-updates main"
    [ -z "$security" ] || echo "deb $security $SUITE-security main"
  } > "$R/etc/apt/sources.list"
  # debootstrap installed the base system before the excludes existed.
  find "$R/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$R/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/lintian/*
  find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

  pkgs=$(sed -e 's/#.*//' "$WS_DIR/$PACKAGES" | xargs)
  [ -n "$pkgs" ] || die "no packages listed in $WS_DIR/$PACKAGES"
  mount --bind /proc "$R/proc"
  say "installing in the rootfs: $pkgs"
  step "apt-get update (chroot)" chroot "$R" apt-get -o DPkg::Lock::Timeout=60 update
  step "apt-get upgrade (chroot)" chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get -y upgrade
  # shellcheck disable=SC2086
  step "apt-get install (chroot)" chroot "$R" env DEBIAN_FRONTEND=noninteractive \
    apt-get -y --no-install-recommends install $pkgs
  step "useradd portico" chroot "$R" useradd --uid 1000 --user-group --create-home \
    --home-dir /home/portico --shell /bin/bash portico
  step "apt-get clean (chroot)" chroot "$R" apt-get clean
  umount "$R/proc"

  slim_rootfs "$R"
  install -d -m 1777 "$R/tmp/.X11-unix"
  rm -f "$R/etc/apt/apt.conf.d/02-portico-build"
  rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb \
    "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old "$R"/root/.bash_history
  find "$R/var/log" -type f -delete
  : > "$R/etc/resolv.conf"
  : > "$R/etc/hostname"
  echo "   packages + slimming: $(since "$t")"

  t=$(now)
  # -b 1: 512-byte records, so the archive ends in exactly 1024 zero bytes (see the import).
  tar -b 1 --numeric-owner -C "$R" --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
    -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf --one-file-system "$R"
  echo "   tarball: $(since "$t") ($(du -m "$TARBALL" | cut -f1) MB)"
  # Keep the 3 most recently used rootfs tarballs of each flavor (other checkouts may use other
  # recipes); a name without a flavor (workspace-rootfs-<hash>.tar, older scripts) counts as default.
  ls -1t "$CACHE_DIR"/workspace-rootfs-*.tar | awk '{
    n = split($0, p, "/"); name = p[n]; sub(/^workspace-rootfs-/, "", name)
    flavor = (name ~ /-/) ? substr(name, 1, index(name, "-") - 1) : "default"
    if (++kept[flavor] > 3) print
  }' | while IFS= read -r f; do
    rm -f "$f" && echo "   removed old $f"
  done
}

# A usable cached tarball ends in two zero blocks (anything else: truncated or foreign).
tarball_ok() {
  [ -s "$TARBALL" ] && [ "$(tail -c 1024 "$TARBALL" | tr -d '\0' | wc -c)" -eq 0 ] \
    && [ "$(tail -c 1536 "$TARBALL" | head -c 512 | tr -d '\0' | wc -c)" -gt 0 ]
}

: > "$LOG"
if [ "$FORCE" -eq 1 ] || ! tarball_ok; then
  say "building rootfs ${BASE_HASH:0:16}"
  build_rootfs
else
  say "using cached rootfs $TARBALL"
  touch "$TARBALL"   # mtime = last use, for the pruning above
fi
if [ "$ROOTFS_ONLY" -eq 1 ]; then
  echo "rootfs ready: $TARBALL ($(since "$T_TOTAL"))"
  exit 0
fi

# ---- image: cached rootfs + scripts/workspace files, in one tar stream ----
t=$(now)
STAGE=$WORK/files
for spec in "${WS_FILES[@]}"; do
  IFS=: read -r src dst mode <<<"$spec"
  install -D -m "$mode" "$WS_DIR/$src" "$STAGE$dst"
done
label_args=()
for l in "${EXTRA_LABELS[@]}"; do label_args+=(-c "LABEL $l"); done
old_id=$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
say "docker import -> $TAG"
# The cached tarball was written with 512-byte records (tar -b 1), so it ends with exactly
# two zero blocks: drop them and append the workspace files (files only, no directory
# entries that would override the rootfs's directory modes) as a second archive.
files=()
for spec in "${WS_FILES[@]}"; do IFS=: read -r _ dst _ <<<"$spec"; files+=(".$dst"); done
{
  head -c -1024 "$TARBALL"
  tar --numeric-owner --owner=0 --group=0 -C "$STAGE" --no-recursion -cf - "${files[@]}"
} | docker import \
  -c 'ENTRYPOINT ["/usr/local/bin/start-vnc"]' \
  -c 'ENV LANG=C.UTF-8' \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'USER 1000:1000' \
  -c 'WORKDIR /home/portico' \
  -c 'EXPOSE 5901' \
  -c "LABEL $LABEL_KEY=$HASH" \
  -c "LABEL org.opencontainers.image.title=\"$TITLE\"" \
  "${label_args[@]}" \
  -m "scripts/build-workspace-image.sh $SHORT" \
  - "$TAG" >/dev/null || die "docker import failed"
echo "   import: $(since "$t")"
new_id=$(docker image inspect --format '{{.Id}}' "$TAG")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  # Drop the replaced image unless something (a container, another tag) still uses it.
  docker image rm "$old_id" >/dev/null 2>&1 || true
fi
size=$(docker image inspect --format '{{.Size}}' "$TAG")
echo "built $TAG (hash $SHORT, $((size / 1000000)) MB) in $(since "$T_TOTAL")"
