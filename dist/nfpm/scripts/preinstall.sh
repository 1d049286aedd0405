#!/bin/sh
# The system user of the service, before the files are unpacked: the
# conffile (root:oauthrelay 0640) and /var/lib/oauthrelay (oauthrelay, 0700)
# are owned by name. Kept on removal (Debian's practice for system users:
# files it owned may remain, e.g. in backups).
set -e
# The home directory, before the user (adduser warns about a missing one);
# dpkg and rpm then give it the package's owner and mode.
install -d -m 0700 /var/lib/oauthrelay
if ! getent passwd oauthrelay >/dev/null; then
  if command -v adduser >/dev/null && [ -e /etc/debian_version ]; then
    adduser --system --group --home /var/lib/oauthrelay --no-create-home \
      --gecos "oauthrelay mail relay" oauthrelay >/dev/null
  else
    useradd --system --user-group --home-dir /var/lib/oauthrelay --no-create-home \
      --shell /sbin/nologin --comment "oauthrelay mail relay" oauthrelay
  fi
fi
# dpkg leaves an existing directory's owner as it is.
chown oauthrelay:oauthrelay /var/lib/oauthrelay
