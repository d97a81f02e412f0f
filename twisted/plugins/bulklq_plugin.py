"""twistd plugin: C{twistd bulklq} runs the DHCPv6 Bulk Leasequery server (L{bulklq.tap})."""

from twisted.application.service import ServiceMaker

bulklq = ServiceMaker(
    "bulklq",
    "bulklq.tap",
    "DHCPv6 Bulk Leasequery (RFC 5460) server",
    "bulklq",
)
