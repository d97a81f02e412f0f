"""
A loopback server for the requestor benchmarks, run as its own process.

  python bench/client_server.py frames N   # replays pre-encoded frames (codec-built)
  python bench/client_server.py bulklq N   # the real bulklq server over a memory store

Prints the TCP port on the first line of stdout, then serves until killed. Every client
is one binding with one address and one delegated prefix (a typical CPE), on link-1.
The C{frames} server answers each LEASEQUERY with REPLY + (N-1) DATA + DONE built once with
the codec, patching in the query's transaction-id: it costs almost nothing, so the
requestor is what is measured.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    Message,
    MessageType,
    ServerId,
    decode_message,
)

SERVER_DUID = Duid.llt(1, 700000000, bytes.fromhex("020000000001"))


def start_server(kind: str, count: int) -> tuple[subprocess.Popen[str], int]:
    """Start this script as a server process; return the process and its port."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__)), kind, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, port


def client_data(number: int) -> ClientData:
    """Client C{number}: one address, one /56, CLT_TIME 30."""
    prefix = IPv6Network(f"2001:db8:{number >> 8 & 0xFFFF:x}:{(number & 0xFF) << 8:x}::/56")
    return ClientData(
        (
            ClientId(Duid.ll(1, number.to_bytes(6, "big"))),
            IAAddress(IPv6Address(0x20010DB8000100000000000000000000 + number), 1800, 3600),
            IAPrefix(1800, 3600, 56, prefix.network_address),
            CltTime(30),
        )
    )


def _frame(message: Message) -> bytes:
    octets = message.encode()
    return len(octets).to_bytes(2, "big") + octets


def frames_stream(count: int) -> tuple[bytes, list[int]]:
    """The whole answer with xid 0, and the offsets of every xid field."""
    parts: list[bytes] = []
    offsets: list[int] = []
    position = 0
    for number in range(1, count + 1):
        if number == 1:
            message = Message(MessageType.LEASEQUERY_REPLY, 0, (ServerId(SERVER_DUID),))
        else:
            message = Message(MessageType.LEASEQUERY_DATA, 0, ())
        message = Message(message.msg_type, 0, (*message.options, client_data(number)))
        parts.append(_frame(message))
    parts.append(_frame(Message(MessageType.LEASEQUERY_DONE, 0, ())))
    for part in parts:
        offsets.append(position + 3)
        position += len(part)
    return b"".join(parts), offsets


def serve_frames(count: int) -> None:
    """Serve pre-encoded answers, one connection at a time."""
    stream, offsets = frames_stream(count)
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::1", 0))
    listener.listen(8)
    print(listener.getsockname()[1], flush=True)

    def answer(connection: socket.socket) -> None:
        with connection:
            buffer = b""
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                    size = int.from_bytes(buffer[:2], "big")
                    query = decode_message(buffer[2 : 2 + size])
                    buffer = buffer[2 + size :]
                    assert isinstance(query, Message)
                    client_id = query.option(ClientId)
                    assert client_id is not None
                    answer_octets = bytearray(stream)
                    xid = query.transaction_id.to_bytes(3, "big")
                    for offset in offsets:
                        answer_octets[offset : offset + 3] = xid
                    # The REPLY needs the requestor's CLIENTID: rebuild the first frame.
                    first_size = int.from_bytes(answer_octets[:2], "big")
                    first = decode_message(bytes(answer_octets[2 : 2 + first_size]))
                    assert isinstance(first, Message)
                    reply = _frame(
                        Message(first.msg_type, first.transaction_id, (client_id, *first.options))
                    )
                    try:
                        connection.sendall(reply + answer_octets[2 + first_size :])
                    except OSError:
                        return  # the requestor went away (| head, a test's abort)

    while True:
        connection, _ = listener.accept()
        threading.Thread(target=answer, args=(connection,), daemon=True).start()


def serve_bulklq(count: int) -> None:
    """Serve C{count} bindings from a MemoryBindingStore with the real bulklq server."""
    from twisted.internet import reactor

    from bulklq.config import ServerConfig
    from bulklq.model import AddressLease, Binding, PrefixLease
    from bulklq.server import BulkLeasequeryFactory
    from bulklq.stores.memory import MemoryBindingStore
    from bulklq.testing import make_link

    now = int(time.time())
    store = MemoryBindingStore([make_link("link-1", ["2001:db8::/32"])])
    bindings = []
    for number in range(1, count + 1):
        data = client_data(number)
        address = data.options[1]
        prefix = data.options[2]
        assert isinstance(address, IAAddress) and isinstance(prefix, IAPrefix)
        bindings.append(
            Binding(
                Duid.ll(1, number.to_bytes(6, "big")),
                "link-1",
                now - 30,
                (AddressLease(address.address, 1800, 3600),),
                (PrefixLease(prefix.network, 1800, 3600),),
            )
        )
    store.put_many(bindings)
    factory = BulkLeasequeryFactory(store, ServerConfig(SERVER_DUID), reactor)
    port = reactor.listenTCP(0, factory, interface="::1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    kind, count = sys.argv[1], int(sys.argv[2])
    if kind == "frames":
        serve_frames(count)
    else:
        serve_bulklq(count)
