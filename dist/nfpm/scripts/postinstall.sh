#!/bin/sh
# Tell systemd about the unit. The service is not started: the
# configuration must be written first (oauthrelay init, or edit
# /etc/oauthrelay/config.yaml), then `systemctl enable --now oauthrelay`.
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  # An upgrade restarts a running relay on the new binary.
  if systemctl is-active --quiet oauthrelay; then
    systemctl try-restart oauthrelay || true
  fi
fi
if [ "$1" = configure ] && [ -z "$2" ] || [ "$1" = 1 ]; then
  echo "oauthrelay: edit /etc/oauthrelay/config.yaml (or run oauthrelay init), then: systemctl enable --now oauthrelay"
fi
