#!/usr/bin/env bash
# Runs a command of the project (default: ./run test) on the *other* Debian
# release, in a minimal chroot, as a new user of that release would:
#
#   scripts/other-release.sh [--suite bookworm|trixie] [--worktree] [COMMAND ...]
#
# Debian 12 (bookworm) and 13 (trixie) ship different OpenSSL, GnuTLS, libp11,
# p11-kit, JDK and Python; the harness must be right on both. The chroot is a
# debootstrap "minbase" (no python3, gcc or git: ./run must install what it
# needs), built once under $P11TLS_CHROOT_DIR (default /var/tmp/p11tls-SUITE)
# and reused. The project's committed HEAD is cloned into it anew each time,
# as CI clones main; with --worktree the working tree's files (tracked and
# untracked, not ignored) are copied instead, for trying a change before
# committing it. Needs root; apt and pip inside use this machine's mirror,
# proxy and CA settings. Exit status: the command's.
set -euo pipefail

die() { echo "other-release: $*" >&2; exit 2; }

this_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
case "$this_suite" in
  bookworm) suite=trixie ;;
  trixie) suite=bookworm ;;
  *) suite="" ;;
esac
worktree=no
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite=${2:-}; shift 2 || die "--suite needs a release name" ;;
    --worktree) worktree=yes; shift ;;
    *) break ;;
  esac
done
[ -n "$suite" ] || die "this machine is '$this_suite'; name the release with --suite"
[ $# -gt 0 ] || set -- ./run test
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, bind mounts)"
project=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel) \
  || die "not inside the project's git clone"
root=${P11TLS_CHROOT_DIR:-/var/tmp/p11tls-$suite}
inside=/project  # where the project lies inside the chroot

mounted_below() { awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r; }
release_mounts() {
  local m
  for m in $(mounted_below); do umount -l "$m" 2>/dev/null || true; done
}

# deb822 sources first, then the one-line format; either file may be absent.
mirror_of_this_machine() {
  cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '$1 == "URIs:" || $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' \
    | grep -v -- -security | head -1 || true
}

build_chroot() {
  local mirror log="$root.debootstrap.log"
  mirror=$(mirror_of_this_machine)
  [ -n "$mirror" ] || die "no Debian mirror configured in /etc/apt"
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  echo "other-release: building a minimal Debian $suite in $root (once, a few minutes)"
  rm -rf --one-file-system "$root"
  debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$log" 2>&1 \
    || die "debootstrap failed; see $log"
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "$mirror" "$suite" "$mirror" "$suite" "${mirror%/debian}/debian-security" "$suite" \
    >"$root/etc/apt/sources.list"
}

# The network settings of this machine: name resolution, proxies, CA bundle.
copy_network_settings() {
  local bundle=/etc/ssl/certs/ca-certificates.crt f
  cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  for f in /etc/apt/apt.conf.d/*[Pp]roxy*; do
    [ -f "$f" ] && cp "$f" "$root/etc/apt/apt.conf.d/"
  done
  if [ -f "$bundle" ]; then
    mkdir -p "$root/etc/p11tls-host"
    cp -L "$bundle" "$root/etc/p11tls-host/ca.crt"
  fi
}

release_mounts
[ -x "$root/usr/bin/apt-get" ] || build_chroot
copy_network_settings
trap release_mounts EXIT
for fs in proc sys dev dev/pts dev/shm; do
  mkdir -p "$root/$fs"
  mount --bind "/$fs" "$root/$fs"
done

rm -rf --one-file-system "$root$inside"
if [ "$worktree" = yes ]; then
  mkdir -p "$root$inside"
  # deleted-but-tracked files are listed too: skip what is not there
  (cd "$project" && git ls-files -z -co --exclude-standard \
     | tar --null --ignore-failed-read -cf - -T - 2>/dev/null) | tar -xf - -C "$root$inside"
  from="the working tree of $(git -C "$project" rev-parse --short HEAD)"
else
  git clone -q "$project" "$root$inside"
  from=$(git -C "$project" rev-parse --short HEAD)
fi
echo "other-release: Debian $suite $(cat "$root/etc/debian_version"), project at $from: $*"

home_inside=$(awk -F: '$1 == "root" { print $6 }' "$root/etc/passwd")
env_inside=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "HOME=$home_inside"
            LANG=C.UTF-8 "CI=${CI:-}")
if [ -f "$root/etc/p11tls-host/ca.crt" ]; then
  env_inside+=(PIP_CERT=/etc/p11tls-host/ca.crt SSL_CERT_FILE=/etc/p11tls-host/ca.crt)
fi
for v in http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY \
         PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
  [ -z "${!v:-}" ] || env_inside+=("$v=${!v}")
done
set +e
chroot "$root" /usr/bin/env -i "${env_inside[@]}" /bin/bash -c \
  "cd $inside && $(printf '%q ' "$@")"
status=$?
set -e
echo "other-release: Debian $suite: exit $status"
exit $status
