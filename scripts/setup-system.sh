#!/usr/bin/env bash
# Installs the Debian packages the harness needs, and only those missing.
# Idempotent and quiet when everything is there; works on Debian 12 and 13,
# as root or through sudo.
set -euo pipefail

required=(
  softhsm2                  # the embedded default token
  opensc                    # pkcs11-tool, pkcs11-spy
  libengine-pkcs11-openssl  # libp11 engine: the openssl-engine client
  gnutls-bin                # gnutls-cli: the gnutls client
  libnss3-tools curl        # tstclnt: the nss client; curl: the curl client
  openssl
  gcc libc6-dev libp11-kit-dev libssl-dev  # building the C interposer
  python3 python3-venv python3-pip
)
optional=(pkcs11-provider)  # the openssl-provider client; Debian 13 and later
# tpm2-pkcs11 on a software TPM (--p11-module tpm2, tox -e tpm2); the TCTI library is
# libtss2-tcti-swtpm0t64 on Debian 13, where the old name is only a virtual package
optional+=(swtpm swtpm-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-tools
           libtss2-tcti-swtpm0t64 libtss2-tcti-swtpm0)
# the openvpn client (pkcs11-helper; libpkcs11-helper1t64 on Debian 13), the go client
# (built offline from Debian's crypto11 sources), the eap-tls client (eapol_test
# against hostapd's RADIUS server)
optional+=(openvpn libpkcs11-helper1t64 libpkcs11-helper1 golang-go
           golang-github-thalesignite-crypto11-dev eapoltest hostapd)
optional+=(rsync)  # gitlab-ci-local (the lab pipeline test) copies the project with it

# `./run test` on the machine's own release: headless Chromium checks matrix.html's
# layout (tests/reports). Not inside a chroot (the other release's: a browser there
# is not worth its size); those tests are skipped with the reason.
# In a chroot no mount has "/" as its mount point (the real root lies outside);
# /proc/1/root cannot be read in every sandbox, so it cannot tell.
in_chroot() { ! awk '$5 == "/" { found = 1 } END { exit !found }' /proc/self/mountinfo 2>/dev/null; }
if [ "${1:-}" = test ] && ! in_chroot; then optional+=(chromium); fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# A JDK >= 17 for the Java client: keep one that is there, else the distribution's default.
have_jdk() {
  local javac version
  javac=$(command -v javac) || return 1
  version=$("$javac" -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p')
  [ -n "$version" ] && [ "$version" -ge 17 ]
}
have_jdk || required+=(default-jdk-headless)

missing=()
for pkg in "${required[@]}"; do
  case "$pkg" in
    python3|python3-venv|python3-pip)
      # A python3 with venv (pyenv, a distribution build) is enough.
      python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=("$pkg") ;;
    *) installed "$pkg" || missing+=("$pkg") ;;
  esac
done

# Without root, sudo is needed only when there is something to install.
sudo=""
as_root() {
  if [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  $sudo "$@"
}

updated=no
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  updated=yes
fi
for pkg in "${optional[@]}"; do
  if ! installed "$pkg"; then
    if [ "$updated" = no ] && ! compgen -G "/var/lib/apt/lists/*Packages*" >/dev/null; then
      if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        continue  # optional: not worth failing for without root
      fi
      as_root apt-get update -qq; updated=yes
    fi
    # grep reads it all: with pipefail, grep -q's early exit fails apt-cache (SIGPIPE)
    if apt-cache show "$pkg" 2>/dev/null | grep '^Package:' >/dev/null; then  # not virtual
      missing+=("$pkg")
    fi
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
