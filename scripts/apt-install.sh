#!/usr/bin/env bash
# Installs Debian packages when run as root on a machine with apt (refreshing the
# package lists once if the first try fails); exits 1 when that is not possible.
# Used by setup-python.sh and deploy-checks.sh.
set -u
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 1
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "$@" >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$@" >/dev/null 2>&1; }
