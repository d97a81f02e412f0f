# shellcheck shell=bash
# Sourced by .ci/run (as root, set -euo pipefail): install Debian's ISC Kea DHCPv6 server (2.2)
# and iproute2 for tests/test_kea_e2e.py, which runs its own kea-dhcp6 inside a private network
# namespace. The packaged system-wide daemon must NOT run: the test starts Kea itself, in the
# foreground, with a configuration and lease file in a temporary directory.
#
# Idempotent: a second run installs nothing and only re-checks that the service is stopped.

_bulklq_kea_packages=()
command -v kea-dhcp6 >/dev/null 2>&1 || [ -x /usr/sbin/kea-dhcp6 ] || _bulklq_kea_packages+=(kea-dhcp6-server)
command -v ip >/dev/null 2>&1 || _bulklq_kea_packages+=(iproute2)

if [ "${#_bulklq_kea_packages[@]}" -gt 0 ]; then
    if [ ! -e /tmp/.bulklq-apt-updated ]; then
        apt-get update -qq
        touch /tmp/.bulklq-apt-updated
    fi
    # Keep maintainer scripts from starting the packaged daemon while installing: a
    # policy-rc.d that answers 101 ("action forbidden") is Debian's documented switch. Add one
    # only if the machine has none, and remove exactly the one we added.
    _bulklq_kea_policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        _bulklq_kea_policy_added=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${_bulklq_kea_packages[@]}" >/dev/null
    if [ "$_bulklq_kea_policy_added" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    unset _bulklq_kea_policy_added
fi
unset _bulklq_kea_packages

# Whatever the init system, leave the packaged service stopped and disabled: it would bind
# UDP 547 on every interface of the host, which the test never wants.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now kea-dhcp6-server.service >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    service kea-dhcp6-server stop >/dev/null 2>&1 || true
    command -v update-rc.d >/dev/null 2>&1 && update-rc.d kea-dhcp6-server disable >/dev/null 2>&1 || true
fi

# Where the end-to-end test finds the daemon.
if [ -z "${BULKLQ_KEA_DHCP6:-}" ]; then
    BULKLQ_KEA_DHCP6=$(command -v kea-dhcp6 || echo /usr/sbin/kea-dhcp6)
fi
export BULKLQ_KEA_DHCP6
echo "kea: $("$BULKLQ_KEA_DHCP6" -V 2>/dev/null | head -n 1 || echo 'not runnable') at $BULKLQ_KEA_DHCP6"
