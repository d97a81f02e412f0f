# shellcheck shell=bash
# Sourced by .ci/run (as root, set -euo pipefail): a real PostgreSQL server holding ISC Kea's
# real lease schema, for tests/test_store_postgresql.py (and bench/store_postgresql.py).
#
# Installs what is missing: the PostgreSQL server (Debian's `postgresql`) and Kea's schema
# script (Debian's `kea-admin`, which ships /usr/share/kea/scripts/pgsql/dhcpdb_create.pgsql
# and no daemon). Then scripts/postgres-test-server starts a throwaway cluster in
# /tmp/bulklq-postgres as the `postgres` user, on a Unix socket only, loads the schema (Kea
# 2.2's, plus the schema 17 and 19 changes) and exports BULKLQ_TEST_POSTGRES_DSN,
# BULKLQ_TEST_POSTGRES_INET_DSN and BULKLQ_TEST_POSTGRES_DIR.
#
# Idempotent: a second run installs nothing, finds the server running and exports the same
# variables. The packaged `main` cluster and any Kea daemon are never started by this script.

_bulklq_pg_packages=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    _bulklq_pg_packages+=(postgresql)
fi
[ -r /usr/share/kea/scripts/pgsql/dhcpdb_create.pgsql ] || _bulklq_pg_packages+=(kea-admin)

if [ "${#_bulklq_pg_packages[@]}" -gt 0 ]; then
    if [ ! -e /tmp/.bulklq-apt-updated ]; then
        apt-get update -qq
        touch /tmp/.bulklq-apt-updated
    fi
    # Keep maintainer scripts from starting daemons (the packaged `main` cluster on port 5432):
    # a policy-rc.d answering 101 is Debian's documented switch. Add one only if the machine
    # has none, and remove exactly the one we added.
    _bulklq_pg_policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        _bulklq_pg_policy_added=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "${_bulklq_pg_packages[@]}" >/dev/null
    if [ "$_bulklq_pg_policy_added" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    unset _bulklq_pg_policy_added
fi
unset _bulklq_pg_packages

# Start (or find running) the test server and take its exports.
eval "$(bash scripts/postgres-test-server start --dir /tmp/bulklq-postgres)"
echo "postgresql: $BULKLQ_TEST_POSTGRES_DSN"
