"""
Binding changes of Kea's PostgreSQL lease database, for Active Leasequery (RFC 7653).

Kea writes C{lease6} directly; bulklq learns about those writes through a trigger and
PostgreSQL's C{LISTEN}/C{NOTIFY}:

  - L{INSTALL_SQL} (run once by a role that may create triggers on C{lease6}: C{bulklq store
    install-notify --store postgresql://...}, or by the DBA with C{psql}) adds the function
    and the C{AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW} trigger
    C{bulklq_lease6_notify}. For every row written it calls C{pg_notify('bulklq_lease6', ...)}
    with a small JSON text describing the row (its key, address, lifetimes, expiry, state
    and, when it fits, its user context): the old row for an C{UPDATE} or C{DELETE}, the new
    row for an C{INSERT} and for an C{UPDATE} that gives the lease to another client.
  - L{PostgreSQLChangeFeedStore} wraps a
    L{PostgreSQLBindingStore<bulklq.stores.postgresql.PostgreSQLBindingStore>}: it answers
    queries through it (L{IBindingStore}) and provides L{IBindingChangeFeed}. Once somebody
    subscribes or asks it to keep history, a dedicated thread with its own connection runs
    C{LISTEN bulklq_lease6}, gathers the notifications that arrive together (coalesced per
    binding), reads the current active leases of those bindings in one query, and publishes
    each binding's new state to a L{ChangeHistory}, as removed when it has no active lease
    left (the removed binding is the notified old rows, lifetimes 0 on the wire: RFC 7653
    section 7).
  - Leases that simply run out are no write: every C{expiry_interval} seconds the same
    thread reads the leases whose expiry fell in C{(last sweep, now]} and publishes their
    bindings, as removed when nothing active is left (RFC 7653 section 9.3).
  - When the connection is lost (a database restart), notifications sent meanwhile are lost:
    the thread reconnects with exponential backoff and the catch-up history is incomplete
    before the reconnection (L{changes_since} answers C{None}, DataMissing, RFC 7653 section
    8.4.1); expiries of the gap are still published, and so are the bindings whose leases
    were written (CLTT) during it, but deletions during the gap are not.

Nothing here needs more than C{SELECT} and C{LISTEN} at run time, and nothing runs unless
Active Leasequery is enabled: read-only deployments are unaffected. See
C{docs/postgresql.md}, section "Active Leasequery: change notifications".
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv6Address
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..changes import DEFAULT_EXPIRY_INTERVAL, BindingChange, ChangeHistory, HistoryFeed
from ..interfaces import IBindingChangeFeed, IBindingStore
from ..model import Binding, BindingKey, BindingPage, BindingQuery, Link
from . import postgresql as _pg
from .kea_leases import (
    KeaLease6,
    KeaLeaseError,
    assemble_binding,
    cached_relay_info,
    client_duid,
    is_active,
    lease_part,
    subnet_link_id,
)

__all__ = [
    "CHANNEL",
    "INSTALL_SQL",
    "MAX_BATCH",
    "RECONNECT_DELAYS",
    "TRIGGER",
    "TRIGGER_CHECK_INTERVAL",
    "UNINSTALL_SQL",
    "ChangeFeedOptions",
    "ClientKey",
    "LeaseEvent",
    "PostgreSQLChangeFeedStore",
    "changes_of",
    "current_bindings",
    "install_notify",
    "notify_installed",
    "open_store_uri",
    "parse_notification",
    "removed_binding",
    "split_changes_options",
    "uninstall_notify",
]

#: The NOTIFY channel the trigger writes to.
CHANNEL = "bulklq_lease6"
#: The trigger's (and its function's) name.
TRIGGER = "bulklq_lease6_notify"

#: Installs the trigger (idempotent). Needs the right to create a function in the schema
#: and to create a trigger on C{lease6} (its owner, or the TRIGGER privilege on it).
INSTALL_SQL = f"""
CREATE OR REPLACE FUNCTION {TRIGGER}_payload(op text, r lease6) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    payload text;
BEGIN
    -- The row as bulklq needs it; the user context only when the whole stays far below
    -- the 8000-octet NOTIFY limit (a NOTIFY that fails would fail Kea's write).
    payload := json_build_object(
        'op', op, 's', r.subnet_id, 'd', encode(r.duid, 'hex'),
        'a', split_part(r.address::text, '/', 1), 't', r.lease_type, 'p', r.prefix_len,
        'i', r.iaid, 'v', r.valid_lifetime, 'f', r.pref_lifetime,
        'e', EXTRACT(EPOCH FROM r.expire)::bigint, 'st', r.state,
        'c', r.user_context)::text;
    IF octet_length(payload) > 7000 THEN
        payload := json_build_object(
            'op', op, 's', r.subnet_id, 'd', encode(r.duid, 'hex'),
            'a', split_part(r.address::text, '/', 1), 't', r.lease_type, 'p', r.prefix_len,
            'i', r.iaid, 'v', r.valid_lifetime, 'f', r.pref_lifetime,
            'e', EXTRACT(EPOCH FROM r.expire)::bigint, 'st', r.state)::text;
    END IF;
    RETURN payload;
END $$;

CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('{CHANNEL}', {TRIGGER}_payload(left(TG_OP, 1), OLD));
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('{CHANNEL}', {TRIGGER}_payload('I', NEW));
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.subnet_id IS DISTINCT FROM OLD.subnet_id
                OR NEW.duid IS DISTINCT FROM OLD.duid THEN
            PERFORM pg_notify('{CHANNEL}', {TRIGGER}_payload('I', NEW));
        END IF;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS {TRIGGER} ON lease6;
CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON lease6
    FOR EACH ROW EXECUTE FUNCTION {TRIGGER}();
"""

#: Removes the trigger and its functions (idempotent).
UNINSTALL_SQL = f"""
DROP TRIGGER IF EXISTS {TRIGGER} ON lease6;
DROP FUNCTION IF EXISTS {TRIGGER}();
DROP FUNCTION IF EXISTS {TRIGGER}_payload(text, lease6);
"""

_INSTALLED_SQL = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_trigger t
    WHERE t.tgrelid = to_regclass('lease6') AND t.tgname = %s AND t.tgenabled <> 'D'
)
"""

#: Seconds between two attempts to reconnect, doubling from the first to the last.
RECONNECT_DELAYS = (0.5, 30.0)
#: Notifications handled in one batch at most (one query for their bindings).
MAX_BATCH = 1000
#: Seconds between two checks for the trigger while it is missing.
TRIGGER_CHECK_INTERVAL = 30.0

_log = Logger()


# -- the trigger's installation ------------------------------------------------------------


def install_notify(conninfo: str) -> None:
    """
    Install (or replace) the trigger in the database of C{conninfo}, in one transaction.

    @raise psycopg.Error: when the database refuses (no C{lease6}, privileges).
    """
    with psycopg.connect(conninfo) as conn:
        conn.execute(INSTALL_SQL)


def uninstall_notify(conninfo: str) -> None:
    """Remove the trigger and its functions from the database of C{conninfo}."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(UNINSTALL_SQL)


def notify_installed(conn: Any) -> bool:
    """Whether the (enabled) trigger is on C{lease6}, on an open psycopg connection."""
    return bool(conn.execute(_INSTALLED_SQL, (TRIGGER,)).fetchone()[0])


# -- notifications -------------------------------------------------------------------------

#: A client of Kea's table: (subnet id, DUID octets).
ClientKey = tuple[int, bytes]


@attrs.frozen
class LeaseEvent:
    """
    A lease row that changed (from a notification) or expired (from a sweep).

    @ivar client: the row's (subnet id, DUID octets).
    @ivar lease: the row: the one before the change for C{UPDATE}/C{DELETE} (C{was_active}
        tells whether it was in use), the new one for C{INSERT}.
    @ivar old: whether C{lease} is the row as it was before the change.
    @ivar expired: whether C{lease} expired (found by a sweep): it was in use until then.
    """

    client: ClientKey
    lease: KeaLease6
    old: bool
    expired: bool = False


def _int(payload: dict[str, Any], name: str, default: int = 0) -> int:
    value = payload.get(name)
    if value is None:
        return default
    if type(value) is not int:
        raise ValueError(f"field {name!r} is not an integer")
    return value


def parse_notification(payload: str) -> LeaseEvent:
    """
    The event of one C{bulklq_lease6} notification (the JSON text of L{INSTALL_SQL}).

    @raise ValueError: for a payload that is not the trigger's.
    """
    try:
        fields = json.loads(payload)
    except ValueError:
        raise ValueError("payload is not JSON") from None
    if not isinstance(fields, dict):
        raise ValueError("payload is not a JSON object")
    op = fields.get("op")
    if op not in ("I", "U", "D"):
        raise ValueError(f"unknown operation {op!r}")
    duid_hex = fields.get("d") or ""
    address = fields.get("a")
    context = fields.get("c")
    if not isinstance(duid_hex, str) or not isinstance(address, str):
        raise ValueError("duid or address is not text")
    if context is not None and not isinstance(context, str):
        raise ValueError("user context is not text")
    try:
        duid = bytes.fromhex(duid_hex)
        parsed = IPv6Address(address)
    except ValueError as error:
        raise ValueError(f"bad duid or address: {error}") from None
    subnet_id = _int(fields, "s")
    lease = KeaLease6(
        address=parsed,
        duid=duid,
        valid_lifetime=_int(fields, "v"),
        expire=_int(fields, "e"),
        subnet_id=subnet_id,
        pref_lifetime=_int(fields, "f"),
        lease_type=_int(fields, "t"),
        iaid=_int(fields, "i"),
        prefix_len=_int(fields, "p", 128),
        state=_int(fields, "st"),
        user_context=context or None,
    )
    return LeaseEvent((subnet_id, duid), lease, op != "I")


def removed_binding(client: ClientKey, leases: Sequence[KeaLease6]) -> Binding | None:
    """
    The binding C{leases} made for C{client} (lifetimes as they were), for publishing its
    removal; C{None} when none of them can be converted.
    """
    parts = []
    for lease in leases:
        try:
            parts.append(lease_part(lease, cached_relay_info(lease.user_context)))
        except KeaLeaseError as error:
            _log.warn("lease6 row {address} skipped: {error}", address=lease.address, error=error)
    if not parts:
        return None
    try:
        duid = client_duid(client[1])
    except KeaLeaseError as error:
        _log.warn("lease6 client skipped: {error}", error=error)
        return None
    return assemble_binding(duid, subnet_link_id(client[0]), parts)


def changes_of(
    events: Iterable[LeaseEvent], current: dict[ClientKey, Binding], now: float
) -> list[tuple[Binding, bool]]:
    """
    What to publish for C{events} (coalesced per client, in order of first appearance):
    the client's current binding if C{current} has one, else its removal built from the
    old rows that were in use at C{now} (none: nothing to publish, it was not a binding).
    """
    order: dict[ClientKey, list[KeaLease6]] = {}
    for event in events:
        gone = order.setdefault(event.client, [])
        if event.old and (event.expired or is_active(event.lease, now)):
            gone.append(event.lease)
    result: list[tuple[Binding, bool]] = []
    for client, gone in order.items():
        binding = current.get(client)
        if binding is not None:
            result.append((binding, False))
        elif gone:
            removed = removed_binding(client, gone)
            if removed is not None:
                result.append((removed, True))
    return result


def current_bindings(
    conn: Any, schema: Any, clients: Sequence[ClientKey], now: float
) -> dict[ClientKey, Binding]:
    """
    The bindings (active leases at C{now}) of C{clients}, read on C{conn} in one query and
    converted by the PostgreSQL store's own row code.
    """
    if not clients:
        return {}
    rows = conn.execute(
        f"SELECT {schema.columns('l')} FROM unnest("  # noqa: S608
        "string_to_array(%(subnets)s, ',')::bigint[], "
        "string_to_array(%(duids)s, ',')) c(subnet_id, duid) "
        "JOIN lease6 l ON l.subnet_id = c.subnet_id AND l.duid = decode(c.duid, 'hex') "
        f"WHERE {_pg._active('l')}",
        {
            "subnets": ",".join(str(subnet) for subnet, _ in clients),
            "duids": ",".join(duid.hex() for _, duid in clients),
            "now": now,
        },
    ).fetchall()
    bindings, _ = _pg._row_bindings(rows, now)
    found: dict[ClientKey, Binding] = {}
    for binding in bindings:
        subnet_id = _pg.subnet_of_link(binding.link_id)
        if subnet_id is not None:
            found[(subnet_id, binding.client_id.raw)] = binding
    return found


# -- the feed ------------------------------------------------------------------------------


@implementer(IBindingStore, IBindingChangeFeed)
class PostgreSQLChangeFeedStore(HistoryFeed):
    """
    A L{PostgreSQLBindingStore<bulklq.stores.postgresql.PostgreSQLBindingStore>} that also
    publishes the changes written to C{lease6} (by Kea or anyone) through the trigger of
    L{INSTALL_SQL} (see the module docstring).

    Queries go to the wrapped store. The listener thread starts when the reactor runs,
    after the first L{subscribe} or L{keep_history}; L{close} stops it, then closes the
    store.

    @ivar store: the wrapped store.
    @ivar changes: the L{ChangeHistory} changes are published to (its C{window} sets how
        far back a catch-up may reach).
    @ivar name: the store's name.
    @ivar connected: whether the listener is connected with C{LISTEN} in place.
    @ivar trigger_installed: whether the trigger was found at the last check (C{None}
        before the first connection).
    @ivar connections: connections made by the listener (reconnections included).
    @ivar published: changes published so far.
    @ivar sweeps: expiry sweeps run so far (counted by the listener thread).
    @ivar trigger_check_interval: seconds between two looks for a missing trigger.
    """

    trigger_check_interval = TRIGGER_CHECK_INTERVAL

    def __init__(
        self,
        store: _pg.PostgreSQLBindingStore,
        conninfo: str,
        reactor: Any = None,
        *,
        clock: IReactorTime | None = None,
        expiry_interval: float = DEFAULT_EXPIRY_INTERVAL,
        reconnect_delays: tuple[float, float] = RECONNECT_DELAYS,
        statement_timeout: int = 30,
        connect_timeout: int = 5,
    ) -> None:
        """
        @param store: the store to answer queries (closed by L{close}).
        @param conninfo: the libpq connection string of the same database.
        @param reactor: L{IReactorThreads}, L{IReactorTime} and L{IReactorCore}; the global
            reactor when C{None}.
        @param clock: "now" for which leases are in use and for change times; C{reactor}
            when C{None}.
        @param expiry_interval: seconds between two expiry sweeps.
        @param reconnect_delays: the first and the longest delay between reconnections.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor  # noqa: PLC0415

            reactor = global_reactor
        if not expiry_interval > 0:
            raise ValueError("the expiry interval must be positive")
        self._reactor = reactor
        self._clock: IReactorTime = reactor if clock is None else clock
        self.store = store
        self.name = store.name
        self._conninfo = conninfo
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": "bulklq-changes",
            "connect_timeout": connect_timeout,
            "options": f"-c statement_timeout={statement_timeout * 1000}",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        self.expiry_interval = expiry_interval
        self.reconnect_delays = reconnect_delays
        self.changes = ChangeHistory(self._clock)
        self.connected = False
        self.trigger_installed: bool | None = None
        self.connections = 0
        self.published = 0
        self.sweeps = 0
        # Unix time from which no notification was lost (None: not listening now).
        self._complete_from: float | None = None
        self._wanted = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake: tuple[int, int] | None = None
        self._stopped: Deferred[None] | None = None
        self._connection_waiters: list[Deferred[None]] = []
        self._shutdown_trigger: Any = None

    # -- IBindingStore --------------------------------------------------------------------

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """See L{IBindingStore.fetch}: the wrapped store's."""
        return self.store.fetch(query, resume_after, limit)

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """See L{IBindingStore.find_link}: the wrapped store's."""
        return self.store.find_link(address)

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """See L{IBindingStore.get_link}: the wrapped store's."""
        return self.store.get_link(link_id)

    def close(self) -> Deferred[None]:
        """Stop the listener (its thread and connection), then close the store."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        stopping = self._stop_listener()
        stopping.addCallback(lambda _: self.store.close())
        return stopping

    # -- IBindingChangeFeed ---------------------------------------------------------------

    def changes_since(self, time: float) -> Deferred[Sequence[BindingChange] | None]:
        """
        See L{IBindingChangeFeed.changes_since}: C{None} (DataMissing, RFC 7653 section
        8.4.1) for a time before the listener's last (re)connection, while it is not
        connected, or while the trigger is missing: changes may have been lost then.
        """
        complete_from = self._complete_from
        if complete_from is None or time < complete_from:
            return defer.succeed(None)
        return self.changes.changes_since(time)

    def _changes_wanted(self) -> None:
        """Changes are wanted (a subscriber, or history kept): start listening if not yet."""
        self._want()

    # -- the listener's life --------------------------------------------------------------

    def _want(self) -> None:
        if self._wanted or self._closed:
            return
        self._wanted = True
        # Threads start when the reactor runs: twistd opens the store before it forks.
        self._reactor.callWhenRunning(self.start)

    def start(self) -> None:
        """Start the listener thread (idempotent; nothing after L{close})."""
        if self._thread is not None or self._closed:
            return
        self._wake = os.pipe()
        os.set_blocking(self._wake[1], False)
        self._stopping.clear()
        self._stopped = Deferred()
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._signal_stop
        )
        self._thread = threading.Thread(
            target=self._listen_thread, name="bulklq-postgresql-changes", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the listener thread runs."""
        return self._thread is not None

    def listening(self) -> Deferred[None]:
        """Fires once the listener is connected with C{LISTEN} in place (now, if it is)."""
        if self.connected:
            return defer.succeed(None)
        return self.next_connection()

    def next_connection(self) -> Deferred[None]:
        """Fires at the listener's next successful (re)connection."""
        waiter: Deferred[None] = Deferred()
        self._connection_waiters.append(waiter)
        return waiter

    def _signal_stop(self) -> None:
        self._stopping.set()
        if self._wake is not None:
            with contextlib.suppress(OSError):  # a full pipe wakes the thread anyway
                os.write(self._wake[1], b"x")

    def _stop_listener(self) -> Deferred[None]:
        thread, stopped = self._thread, self._stopped
        if thread is None or stopped is None:
            return defer.succeed(None)
        self._signal_stop()
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None

        def ended(result: None) -> None:
            thread.join()
            self._thread = None
            self._stopped = None
            if self._wake is not None:
                for fd in self._wake:
                    os.close(fd)
                self._wake = None
            self.connected = False
            self._complete_from = None
            waiters, self._connection_waiters = self._connection_waiters, []
            for waiter in waiters:
                waiter.cancel()

        stopped.addCallback(ended)
        return stopped

    # -- reactor-thread callbacks from the listener ---------------------------------------

    def _connected(self, installed: bool) -> None:
        self.connections += 1
        self.connected = True
        self._set_installed(installed)
        waiters, self._connection_waiters = self._connection_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _trigger_found(self) -> None:
        if self.connected:
            self._set_installed(True)

    def _set_installed(self, installed: bool) -> None:
        if installed != self.trigger_installed:
            if installed:
                _log.info("{name}: listening for lease6 changes", name=self.name)
            else:
                _log.error(
                    "{name}: the {trigger} trigger is not installed on lease6: Active "
                    "Leasequery sees only expiries (run 'bulklq store install-notify')",
                    name=self.name,
                    trigger=TRIGGER,
                )
        self.trigger_installed = installed
        # Notifications are complete from now on (only with the trigger in place).
        self._complete_from = float(self._clock.seconds()) if installed else None

    def _disconnected(self, reason: str, delay: float) -> None:
        if self.connected or self.connections == 0:
            _log.warn(
                "{name}: change notifications lost ({reason}); reconnecting in {delay:.1f} s",
                name=self.name,
                reason=reason,
                delay=delay,
            )
        self.connected = False
        self._complete_from = None

    def _publish(self, changes: list[tuple[Binding, bool]]) -> None:
        publish = self.changes.publish
        for binding, removed in changes:
            publish(binding, removed)
        self.published += len(changes)

    def _thread_ended(self) -> None:
        stopped = self._stopped
        if stopped is not None and not stopped.called:
            stopped.callback(None)

    # -- the listener thread --------------------------------------------------------------

    def _call(self, function: Callable[..., Any], *args: Any) -> None:
        self._reactor.callFromThread(function, *args)

    def _now(self) -> float:
        return float(self._clock.seconds())

    def _listen_thread(self) -> None:
        first, longest = self.reconnect_delays
        delay = first
        state = _SweepState(self._now())
        try:
            while not self._stopping.is_set():
                try:
                    self._session(state)
                    delay = first  # a clean end: stopping
                except Exception as error:
                    if self._stopping.is_set():
                        break
                    if isinstance(error, (psycopg.Error, _pg.PostgreSQLStoreError, OSError)):
                        reason = " ".join(str(error).split()) or type(error).__name__
                    else:  # a bug: reported, and the listener carries on
                        _log.failure("the change listener failed")
                        reason = f"internal error {type(error).__name__}"
                    if state.connected:
                        state.lost_at = self._now()
                        state.connected = False
                        delay = first
                    self._call(self._disconnected, reason, delay)
                    self._sleep(delay)
                    delay = min(longest, delay * 2)
        finally:
            self._call(self._thread_ended)

    def _sleep(self, seconds: float) -> None:
        """Wait C{seconds}, or less if asked to stop."""
        wake = self._wake
        if wake is None or self._stopping.is_set():
            return
        select.select([wake[0]], [], [], seconds)

    def _session(self, state: _SweepState) -> None:
        """One connection: LISTEN, then notifications and sweeps until stopped or lost."""
        conn = psycopg.connect(self._conninfo, **self._connect_kwargs)
        with conn:
            schema = _pg.PostgreSQLBindingStore._read_schema(conn)
            conn.execute(f"LISTEN {CHANNEL}")
            installed = notify_installed(conn)
            state.connected = True
            self._call(self._connected, installed)
            if state.lost_at is not None:
                # Bindings written while nobody listened: found by their CLTT.
                self._resync(conn, schema, state.lost_at)
                state.lost_at = None
            self._serve(conn, schema, state, installed)

    def _serve(self, conn: Any, schema: Any, state: _SweepState, installed: bool) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        next_sweep = time.monotonic() + self.expiry_interval
        next_check = time.monotonic() + self.trigger_check_interval
        while not self._stopping.is_set():
            notes = list(conn.notifies(timeout=0, stop_after=MAX_BATCH))
            if notes:
                events = []
                for note in notes:
                    if note.channel != CHANNEL:
                        continue
                    try:
                        events.append(parse_notification(note.payload))
                    except ValueError as error:
                        _log.warn(
                            "a {channel} notification ignored: {error}",
                            channel=CHANNEL,
                            error=error,
                        )
                self._handle(conn, schema, events)
            else:
                timeout = max(0.0, next_sweep - time.monotonic())
                readable, _, _ = select.select([conn.fileno(), wake], [], [], timeout)
                if wake in readable:
                    continue  # stopping
            monotonic = time.monotonic()
            if monotonic >= next_sweep:
                self._sweep(conn, schema, state)
                next_sweep = monotonic + self.expiry_interval
            if not installed and monotonic >= next_check:
                next_check = monotonic + self.trigger_check_interval
                if notify_installed(conn):
                    installed = True
                    self._call(self._trigger_found)

    def _handle(self, conn: Any, schema: Any, events: Sequence[LeaseEvent]) -> None:
        """Publish the bindings of C{events}: one query for their current state."""
        if not events:
            return
        now = self._now()
        clients = list(dict.fromkeys(event.client for event in events))
        current = current_bindings(conn, schema, clients, now)
        changes = changes_of(events, current, now)
        if changes:
            self._call(self._publish, changes)

    def _sweep(self, conn: Any, schema: Any, state: _SweepState) -> None:
        """RFC 7653 section 9.3: the bindings whose leases expired since the last sweep."""
        self.sweeps += 1
        now = self._now()
        since = state.swept
        if now <= since:
            return
        rows = conn.execute(
            f"SELECT {schema.columns('l')} FROM lease6 l "  # noqa: S608
            "WHERE l.state = 0 AND l.valid_lifetime > 0 "
            "AND l.expire > to_timestamp(%(since)s) AND l.expire <= to_timestamp(%(now)s)",
            {"since": since, "now": now},
        ).fetchall()
        state.swept = now
        if not rows:
            return
        # Each expired lease is an old row that was in use until it expired.
        events = [
            LeaseEvent((lease.subnet_id, lease.duid), lease, old=True, expired=True)
            for lease in _pg._row_leases(rows)
        ]
        current = current_bindings(conn, schema, list(dict.fromkeys(e.client for e in events)), now)
        changes = changes_of(events, current, now)
        if changes:
            self._call(self._publish, changes)

    def _resync(self, conn: Any, schema: Any, since: float) -> None:
        """After a reconnection: publish the bindings with a lease written since C{since}."""
        rows = conn.execute(
            "SELECT DISTINCT l.subnet_id, l.duid FROM lease6 l "
            "WHERE l.expire - make_interval(secs => l.valid_lifetime) >= to_timestamp(%(since)s)",
            {"since": since - 1},
        ).fetchall()
        clients = [(int(subnet), bytes(duid or b"")) for subnet, duid in rows]
        now = self._now()
        for start in range(0, len(clients), MAX_BATCH):
            chunk = clients[start : start + MAX_BATCH]
            current = current_bindings(conn, schema, chunk, now)
            changes = [(current[client], False) for client in chunk if client in current]
            if changes:
                self._call(self._publish, changes)


@attrs.define
class _SweepState:
    """What the listener thread keeps across reconnections."""

    #: Unix time up to which expiries were published.
    swept: float
    connected: bool = False
    #: When the last connection was lost (C{None}: not lost, or resynchronised since).
    lost_at: float | None = None


# -- the registry's opener -----------------------------------------------------------------


@attrs.frozen
class ChangeFeedOptions:
    """
    The options of a C{postgresql://} URI that concern the change feed.

    @ivar changes: C{"notify"} (the default: publish changes when Active Leasequery is
        enabled) or C{"off"} (a plain store).
    @ivar expiry_interval: seconds between two expiry sweeps.
    @ivar host: the libpq host(s) the listener connects to instead of the URI's (the
        primary, when the store reads from standbys: NOTIFY is not replicated).
    @ivar port: the port(s) for C{host}.
    """

    changes: str = "notify"
    expiry_interval: float = DEFAULT_EXPIRY_INTERVAL
    host: str | None = None
    port: str | None = None

    def listener_conninfo(self, conninfo: str) -> str:
        """
        The connection string of the listener: C{conninfo} with C{host}/C{port} when
        given, and C{target_session_attrs=primary} where the store asks for a standby.
        """
        changes: dict[str, Any] = {}
        if self.host is not None:
            changes["host"] = self.host
            changes["port"] = self.port or ""
            changes["target_session_attrs"] = "any"
        else:
            wanted = str(conninfo_to_dict(conninfo).get("target_session_attrs") or "")
            if wanted in ("standby", "prefer-standby", "read-only"):
                changes["target_session_attrs"] = "primary"
        return make_conninfo(conninfo, **changes) if changes else conninfo


def split_changes_options(uri: str) -> tuple[str, ChangeFeedOptions]:
    """
    Take this module's options out of a C{postgresql://} URI: C{changes} (C{notify} or
    C{off}), C{expiry-interval} (seconds, default 1), C{changes-host} and C{changes-port}
    (see L{ChangeFeedOptions}).

    @return: the URI without them, and the options.
    @raise ValueError: for a bad value.
    """
    parts = urlsplit(uri)
    found: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "changes":
            if value not in ("notify", "off"):
                raise ValueError(f"changes={value!r} is not notify or off")
            found["changes"] = value
        elif name == "expiry-interval":
            try:
                interval = float(value)
            except ValueError:
                raise ValueError(f"expiry-interval={value!r} is not a number") from None
            if not 0 < interval <= 3600:
                raise ValueError(f"expiry-interval={value} is not in (0, 3600]")
            found["expiry_interval"] = interval
        elif name in ("changes-host", "changes-port"):
            if not value:
                raise ValueError(f"{name} is empty")
            found[name[len("changes-") :]] = value
        else:
            rest.append((name, value))
    if "port" in found and "host" not in found:
        raise ValueError("changes-port needs changes-host")
    query = urlencode(rest)
    # By hand, as the store does: urlunsplit drops the empty authority of postgresql:///db.
    stripped = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    return stripped, ChangeFeedOptions(**found)


def open_store_uri(uri: str, reactor: Any = None) -> IBindingStore:
    """
    Open a C{postgresql://} store URI (the C{--store} registry's opener): the PostgreSQL
    store, wrapped in a L{PostgreSQLChangeFeedStore} unless C{changes=off}. The wrapper
    does nothing (no thread, no connection) until Active Leasequery uses it.

    @raise ValueError: for a malformed URI, a bad option or an unreadable Kea configuration.
    """
    stripped, options = split_changes_options(uri)
    store = _pg.open_store_uri(stripped, reactor)
    if options.changes == "off":
        return store
    settings = _pg.parse_postgresql_uri(stripped)
    try:
        conninfo = options.listener_conninfo(settings.conninfo)
    except psycopg.ProgrammingError as error:
        raise ValueError(f"postgresql: {error}") from None
    return PostgreSQLChangeFeedStore(
        store,
        conninfo,
        reactor,
        expiry_interval=options.expiry_interval,
        statement_timeout=settings.statement_timeout,
        connect_timeout=settings.connect_timeout,
    )
