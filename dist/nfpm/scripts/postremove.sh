#!/bin/sh
# dpkg --purge removes the conffile itself; the state (token store, its key,
# the spool) and what `oauthrelay init` wrote beside the config (the secret
# files it references, the PowerShell) go with it, as Debian policy asks of
# purge. `dpkg -r` and rpm -e keep them, so a reinstall finds its tokens.
# The system user stays.
set -e
case "$1" in
  purge)
    rm -rf /var/lib/oauthrelay
    rm -f /etc/oauthrelay/oauthrelay-setup.ps1 /etc/oauthrelay/*-client-secret /etc/oauthrelay/*-mailbox-password
    rmdir /etc/oauthrelay 2>/dev/null || true
    ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
