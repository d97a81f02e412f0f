"""
The server's DUID: given by the operator, or generated once and kept in a state file.

Requestors check the SERVERID of every reply against the server they asked (RFC 5007
section 4.2.1, S3), so the DUID must not change across restarts. Like Kea's
C{kea-dhcp6-serverid} file, C{STATE-DIR/server-id} holds the DUID as colon-separated hex on
one line; bulklq writes a DUID-LLT (RFC 8415 section 11.2) the first time it starts and reads
it back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .config import ConfigError
from .wire import Duid, WireError

__all__ = ["SERVER_ID_FILE", "generate_duid_llt", "load_or_create_server_duid"]

#: Name of the state file holding the server DUID.
SERVER_ID_FILE = "server-id"

#: Seconds from the Unix epoch to 2000-01-01 00:00 UTC, the DUID-LLT time origin.
_DUID_EPOCH = 946684800
#: ARP hardware type of Ethernet (RFC 826), the usual DUID-LLT hardware type.
_ETHERNET = 1


def _link_layer_address() -> bytes:
    """A MAC address of this host, or a random locally administered one."""
    node = uuid.getnode()
    if node >> 40 & 0x01:
        # uuid.getnode() found no hardware address and made one up (multicast bit set):
        # use a random locally administered unicast address instead.
        raw = bytearray(secrets.token_bytes(6))
        raw[0] = (raw[0] & 0xFC) | 0x02
        return bytes(raw)
    return node.to_bytes(6, "big")


def generate_duid_llt(
    now: float, link_layer_address: Callable[[], bytes] = _link_layer_address
) -> Duid:
    """A new DUID-LLT: Ethernet, C{now} (Unix seconds) counted from 2000, a MAC address."""
    seconds = int(now - _DUID_EPOCH) % 2**32
    return Duid.llt(_ETHERNET, seconds, link_layer_address())


def load_or_create_server_duid(
    state_dir: Path,
    now: Callable[[], float] = time.time,
    link_layer_address: Callable[[], bytes] = _link_layer_address,
) -> Duid:
    """
    The DUID stored in C{state_dir/server-id}; generated and stored first if the file does
    not exist (the directory is created if needed, mode 0750).

    @raise ConfigError: if the directory or file cannot be created or read, or the file
        does not hold a valid DUID; the message names the path.
    """
    path = state_dir / SERVER_ID_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        pass
    except OSError as error:
        raise ConfigError(
            f"cannot read the server DUID file {str(path)!r}: {error.strerror}; "
            "set --state-dir to a usable directory or give --server-duid"
        ) from None
    except UnicodeDecodeError:
        text = ""
    else:
        try:
            return Duid.from_text(text)
        except WireError as error:
            raise ConfigError(
                f"server DUID file {str(path)!r} holds no valid DUID ({error.reason}); "
                "fix or remove it, or give --server-duid"
            ) from None
    duid = generate_duid_llt(now(), link_layer_address)
    temporary = path.with_name(f".{SERVER_ID_FILE}.{os.getpid()}.tmp")
    try:
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        temporary.write_text(f"{duid}\n", encoding="ascii")
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise ConfigError(
            f"cannot store the server DUID in {str(path)!r}: {error.strerror}; "
            "set --state-dir to a writable directory or give --server-duid"
        ) from None
    return duid
