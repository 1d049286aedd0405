#!/bin/sh
# Stop the relay before its files go (not on upgrade: deb "upgrade",
# rpm 1 = another version stays installed).
set -e
case "$1" in
  remove|purge|0)
    if [ -d /run/systemd/system ]; then
      systemctl disable --now oauthrelay >/dev/null 2>&1 || true
    fi
    ;;
esac
