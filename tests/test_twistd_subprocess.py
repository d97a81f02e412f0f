"""
A real C{twistd -n bulklq} process on loopback: TCP Bulk Leasequery, UDP Leasequery, a
metrics scrape, systemd socket activation, Active Leasequery over STARTTLS and an C{ssl:}
listener with requestor certificates, and SIGTERM.

These are the few tests that run the server as an operator does; they use plain blocking
sockets as the requestor so that they depend on nothing but the wire format.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bulklq.wire import (
    ClientData,
    ClientId,
    Duid,
    IAAddress,
    LQBaseTime,
    LQQuery,
    Message,
    MessageType,
    QueryType,
    RelayId,
    ServerId,
    StatusCode,
    StatusCodeOption,
    decode_message,
)

ROOT = Path(__file__).resolve().parent.parent
BINDINGS = ROOT / "examples" / "bindings.jsonl"
TWISTD = Path(sys.executable).parent / "twistd"
REQUESTOR = Duid.en(32473, b"test-requestor")
RELAY_1 = Duid.from_text("00:02:00:00:ab:11:72:65:6c:61:79:2d:31")


def free_port() -> int:
    """A port free for both TCP and UDP on ::1."""
    for _ in range(20):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp:
            tcp.bind(("::1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("::1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def leasequery(query_type: int, *options: object, xid: int = 1, link: str = "::") -> bytes:
    """An unframed LEASEQUERY."""
    return Message(
        MessageType.LEASEQUERY,
        xid,
        (ClientId(REQUESTOR), LQQuery(query_type, IPv6Address(link), tuple(options))),  # type: ignore[arg-type]
    ).encode()


def read_frames(sock: socket.socket) -> Iterator[Message]:
    """Messages read from a Bulk Leasequery connection until it closes."""
    buffer = b""
    while True:
        while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
            length = struct.unpack("!H", buffer[:2])[0]
            message = decode_message(buffer[2 : 2 + length])
            assert isinstance(message, Message)
            buffer = buffer[2 + length :]
            yield message
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk


def read_frame(sock: socket.socket | ssl.SSLSocket) -> Message | None:
    """Exactly one framed message (nothing more is read), or C{None} at end of stream."""
    header = b""
    while len(header) < 2:
        chunk = sock.recv(2 - len(header))
        if not chunk:
            return None
        header += chunk
    (length,) = struct.unpack("!H", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    message = decode_message(body)
    assert isinstance(message, Message)
    return message


def send_frame(sock: socket.socket | ssl.SSLSocket, message: Message) -> None:
    """Send one framed message."""
    data = message.encode()
    sock.sendall(struct.pack("!H", len(data)) + data)


def bulk_query(port: int, frame: bytes) -> list[Message]:
    """Send one query over TCP, half-close, and read every reply until the server closes."""
    with socket.create_connection(("::1", port), timeout=20) as sock:
        sock.sendall(struct.pack("!H", len(frame)) + frame)
        sock.shutdown(socket.SHUT_WR)
        return list(read_frames(sock))


class TwistdProcessTests(SynchronousTestCase):
    """C{twistd -n bulklq} as a subprocess."""

    def start(self, *arguments: str, **popen: object) -> subprocess.Popen[bytes]:
        """Start twistd with C{arguments}; stop it (SIGTERM) at cleanup."""
        self.log = Path(self.mktemp()).resolve()
        self.state = Path(self.mktemp()).resolve()
        log_file = self.log.open("wb")
        self.addCleanup(log_file.close)
        process = subprocess.Popen(
            [
                str(TWISTD),
                "--nodaemon",
                "--pidfile=",
                "bulklq",
                "--state-dir",
                str(self.state),
                "--store",
                f"memory:{BINDINGS}",
                *arguments,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            **popen,  # type: ignore[call-overload]
        )

        def stop() -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

        self.addCleanup(stop)
        return process

    def wait_for_port(self, process: subprocess.Popen[bytes], port: int) -> None:
        """Wait until the server accepts connections on C{port}."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.fail(f"twistd exited with {process.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("::1", port), 1):
                return
            time.sleep(0.1)
        self.fail(f"twistd did not listen on {port}:\n{self.log.read_text()}")

    def test_serves_queries_then_stops_on_sigterm(self) -> None:
        """
        The real server answers a QUERY_BY_RELAY_ID on loopback with REPLY, DATA... and DONE
        (S30, S32, S35) signed with the DUID it stored in its state directory; answers a UDP
        QUERY_BY_ADDRESS and refuses a bulk query type over UDP (S13); counts both in the
        metrics; and stops cleanly on SIGTERM.
        """
        port, metrics_port = free_port(), free_port()
        process = self.start(
            "--listen",
            f"tcp6:{port}:interface=\\:\\:1",
            "--udp",
            "--metrics",
            f"tcp6:{metrics_port}:interface=\\:\\:1",
        )
        self.wait_for_port(process, port)
        server_duid = Duid.from_text((self.state / "server-id").read_text())

        replies = bulk_query(port, leasequery(QueryType.QUERY_BY_RELAY_ID, RelayId(RELAY_1)))
        self.assertEqual(
            [m.msg_type for m in replies],
            [MessageType.LEASEQUERY_REPLY]
            + [MessageType.LEASEQUERY_DATA] * 3
            + [MessageType.LEASEQUERY_DONE],
        )
        self.assertEqual(replies[0].option(ServerId), ServerId(server_duid))
        self.assertEqual(sum(1 for m in replies if m.option(ClientData)), 4)

        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.settimeout(20)
            udp.sendto(
                leasequery(1, IAAddress(IPv6Address("2001:db8:1::65"), 0, 0), xid=9),
                ("::1", port),
            )
            reply = decode_message(udp.recv(65536))
            udp.sendto(leasequery(3, RelayId(RELAY_1), xid=10), ("::1", port))
            refused = decode_message(udp.recv(65536))
        assert isinstance(reply, Message) and isinstance(refused, Message)
        self.assertEqual((reply.msg_type, reply.transaction_id), (MessageType.LEASEQUERY_REPLY, 9))
        self.assertIsNotNone(reply.option(ClientData))
        status = refused.option(StatusCodeOption)
        assert status is not None
        self.assertEqual(status.status, StatusCode.NotAllowed)

        with urllib.request.urlopen(f"http://[::1]:{metrics_port}/metrics", timeout=20) as page:
            text = page.read().decode()
        self.assertIn('bulklq_queries_total{status="Success",type="relay-id"} 1.0', text)
        self.assertIn('bulklq_queries_total{status="Success",type="address"} 1.0', text)
        self.assertIn("bulklq_bindings_sent_total 5.0", text)

        process.send_signal(signal.SIGTERM)
        # twistd ends by re-raising the signal it stopped on; systemd counts that as success.
        self.assertEqual(process.wait(30), -signal.SIGTERM)
        log = self.log.read_text()
        self.assertIn("shutting down", log)
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)

    def test_socket_activation(self) -> None:
        """
        With C{--listen systemd:domain=INET6:index=0} the server serves the socket systemd
        passes (LISTEN_FDS), as contrib/systemd/bulklq.socket sets it up.
        """
        port = free_port()
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("::1", port))
        listener.listen(16)
        launcher = (
            "import os, sys\n"
            f"os.dup2({listener.fileno()}, 3)\n"
            "os.environ['LISTEN_FDS'] = '1'\n"
            "os.environ['LISTEN_FDNAMES'] = 'bulklq.socket'\n"
            "os.environ['LISTEN_PID'] = str(os.getpid())\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n"
        )
        self.log = Path(self.mktemp()).resolve()
        state = Path(self.mktemp()).resolve()
        with self.log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    launcher,
                    str(TWISTD),
                    "--nodaemon",
                    "--pidfile=",
                    "bulklq",
                    "--state-dir",
                    str(state),
                    "--store",
                    f"memory:{BINDINGS}",
                    "--listen",
                    "systemd:domain=INET6:index=0",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),),
            )
        try:
            replies = bulk_query(port, leasequery(QueryType.QUERY_BY_RELAY_ID, RelayId(RELAY_1)))
            self.assertEqual(replies[-1].msg_type, MessageType.LEASEQUERY_DONE)
        finally:
            process.send_signal(signal.SIGTERM)
            self.assertEqual(process.wait(30), -signal.SIGTERM, self.log.read_text())

    def test_active_leasequery_over_tls(self) -> None:
        """
        RFC 7653 sections 8.2, 9.1 and 8.4: started with C{--active-leasequery} and the
        C{--tls-*} files, the server answers STARTTLS with a REPLY, completes a TLS
        handshake that presents the requestor's certificate (Python's C{ssl} module, not
        Twisted), answers the ACTIVELEASEQUERY with a LEASEQUERY-REPLY carrying
        OPTION_LQ_BASE_TIME; the C{ssl:} listener does the same without STARTTLS and
        refuses a requestor without a certificate; SIGTERM ends the active queries with
        LEASEQUERY-DONE(QueryTerminated).
        """
        from .test_active_glue import write_certificates

        certs = write_certificates(Path(self.mktemp()).resolve())
        port, tls_port = free_port(), free_port()
        process = self.start(
            "--active-leasequery",
            *certs.settings(),
            "--listen",
            f"tcp6:{port}:interface=\\:\\:1",
            "--listen",
            f"ssl:{tls_port}:interface=\\:\\:1",
        )
        self.wait_for_port(process, port)
        self.wait_for_port(process, tls_port)

        def context(with_certificate: bool) -> ssl.SSLContext:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            tls.load_verify_locations(certs.ca)
            if with_certificate:
                tls.load_cert_chain(certs.requestor_cert, certs.requestor_key)
            return tls

        active = Message(MessageType.ACTIVELEASEQUERY, 2, (ClientId(REQUESTOR),))
        starttls = socket.create_connection(("::1", port), timeout=20)
        self.addCleanup(starttls.close)
        send_frame(starttls, Message(MessageType.STARTTLS, 1, (ClientId(REQUESTOR),)))
        reply = read_frame(starttls)
        assert reply is not None
        self.assertEqual(
            (reply.msg_type, reply.option(StatusCodeOption)), (MessageType.REPLY, None)
        )
        secured = context(True).wrap_socket(starttls, server_hostname="localhost")
        self.addCleanup(secured.close)
        send_frame(secured, active)
        accepted = read_frame(secured)
        assert accepted is not None
        self.assertEqual(accepted.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertIsNone(accepted.option(StatusCodeOption))
        self.assertIsNotNone(accepted.option(LQBaseTime))

        direct = context(True).wrap_socket(
            socket.create_connection(("::1", tls_port), timeout=20), server_hostname="localhost"
        )
        self.addCleanup(direct.close)
        send_frame(direct, active)
        accepted = read_frame(direct)
        assert accepted is not None
        self.assertEqual(accepted.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertIsNone(accepted.option(StatusCodeOption))

        with socket.create_connection(("::1", tls_port), timeout=20) as raw:
            try:
                anonymous = context(False).wrap_socket(raw, server_hostname="localhost")
                send_frame(anonymous, active)
                refused = read_frame(anonymous)
            except (ssl.SSLError, OSError):
                refused = None
        self.assertIsNone(refused, "no reply without a requestor certificate")

        process.send_signal(signal.SIGTERM)
        for sock in (secured, direct):
            done = read_frame(sock)
            assert done is not None
            status = done.option(StatusCodeOption)
            assert status is not None
            self.assertEqual(
                (done.msg_type, status.status),
                (MessageType.LEASEQUERY_DONE, StatusCode.QueryTerminated),
            )
            sock.close()  # as a requestor does after DONE; the server then exits at once
        self.assertEqual(process.wait(30), -signal.SIGTERM)
        self.assertNotIn("Traceback", self.log.read_text())

    def test_port_in_use(self) -> None:
        """A port that cannot be bound: exit status 1 and one line, no traceback."""
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
            taken.bind(("::1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            process = self.start("--listen", f"tcp6:{port}:interface=\\:\\:1")
            self.assertEqual(process.wait(30), 1)
        output = self.log.read_text()
        self.assertNotIn("Traceback", output)
        self.assertIn(f"twistd bulklq: cannot listen on 'tcp6:{port}", output)


if os.name != "posix":  # pragma: no cover
    TwistdProcessTests.skip = "POSIX signals and socket activation"  # type: ignore[attr-defined]
