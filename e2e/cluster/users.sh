#!/usr/bin/env bash
# Creates the two ordinary users of the security suite, if missing: alice owns the job, mallory
# attacks it. Each gets a home of mode 0700, as on a shared cluster. Idempotent; run as root.
set -euo pipefail
for u in alice mallory; do
    if ! id "$u" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$u"
        echo "users: created $u"
    fi
    chmod 0700 "$(getent passwd "$u" | cut -d: -f6)"
done
