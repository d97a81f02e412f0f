# shellcheck shell=bash
# Sourced by .ci/run (as root, set -euo pipefail): install Debian's tshark (Wireshark's command
# line) and text2pcap for tests/test_interop_decoders.py, which has an independent dissector
# check that bulklq's encodings are what Wireshark reads as DHCPv6 Bulk Leasequery.
#
# wireshark-common asks (debconf) whether non-root users may capture; preseed "no" so the install
# is non-interactive and installs no setuid/setcap dumpcap. The tests only read files, so no
# capture privileges are needed.
#
# Idempotent: when tshark and text2pcap are present this does nothing.

if ! command -v tshark >/dev/null 2>&1 || ! command -v text2pcap >/dev/null 2>&1; then
    if [ ! -e /tmp/.bulklq-apt-updated ]; then
        apt-get update -qq
        touch /tmp/.bulklq-apt-updated
    fi
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        tshark >/dev/null
fi
command -v tshark >/dev/null
command -v text2pcap >/dev/null
