"""
C{twistd bulklq}: command-line options and the service they make.

The options are those of L{bulklq.settings.OPTIONS} plus C{--config FILE}; every bad value
is a L{usage.UsageError} naming it (twistd prints it and exits with status 1). Problems
that only show when the server starts (an unwritable state directory, a store that cannot
be opened, a port that cannot be bound) end the process with one line on standard error and
status 1, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, FirstError
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from . import metrics
from .config import ConfigError
from .identity import load_or_create_server_duid
from .settings import OPTIONS, Settings, resolve

__all__ = ["Options", "makeService"]

_log = Logger()


def _help(name: str) -> str:
    spec = next(spec for spec in OPTIONS if spec.name == name)
    return f"{spec.help} [default: {spec.default}]"


class Options(usage.Options):
    """The options of C{twistd bulklq}; after parsing, L{settings} holds the result."""

    synopsis = "[options]"
    longdesc = (
        "Serve DHCPv6 Bulk Leasequery (RFC 5460) over TCP, and optionally UDP Leasequery "
        "(RFC 5007) and Active Leasequery over TLS (RFC 7653), from a binding store. Every "
        "option can also be set in the --config TOML file under the same name; the command "
        "line wins."
    )
    optFlags = [  # noqa: N815 - usage.Options's name
        [spec.name, None, _help(spec.name)] for spec in OPTIONS if spec.kind == "flag"
    ]
    optParameters = [  # noqa: N815
        ["config", "c", None, "TOML file whose keys are these options' names."],
        *([spec.name, None, None, _help(spec.name)] for spec in OPTIONS if spec.kind == "value"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["allow"] = []
        self["tls-requestor"] = []
        self.settings: Settings | None = None

    def opt_listen(self, description: str) -> None:
        """Endpoint to accept Bulk Leasequery connections on (repeatable): tcp6:PORT:interface=...,
        tcp:..., ssl:..., systemd:domain=INET6:index=0. [default: tcp6:547:interface=\\:\\:]
        """
        self["listen"].append(description)

    def opt_allow(self, rule: str) -> None:
        """Requestors allowed to connect, CIDR[:query-types] (repeatable; types by name or 1-5).
        [default: ::1/128 and 127.0.0.0/8, this host only]
        """
        self["allow"].append(rule)

    def opt_tls_requestor(self, pattern: str) -> None:
        """Accept only requestor certificates naming this DNS name (subjectAltName or CN), IP
        address (subjectAltName) or sha256:FINGERPRINT (repeatable; needs --tls-ca).
        [default: any certificate signed by --tls-ca]
        """
        self["tls-requestor"].append(pattern)

    def postOptions(self) -> None:
        """Validate everything now, so that twistd reports a bad value before starting."""
        given: dict[str, Any] = {}
        for spec in OPTIONS:
            value = self[spec.name]
            if spec.kind == "flag":
                if value:
                    given[spec.name] = True
            elif value is not None and value != []:
                given[spec.name] = value
        config_file = Path(self["config"]) if self["config"] else None
        try:
            self.settings = resolve(given, os.environ, config_file)
            if self.settings.metrics is not None:
                metrics.require()
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None


def _log_observer(settings: Settings, twistd_options: Any) -> ILogObserver | None:
    """
    The observer twistd should log to: text (twistd's C{--logfile}) or JSON lines
    (C{--log-json}), filtered at C{--log-level}. C{None} under C{--syslog}, leaving twistd's
    choice alone.
    """
    getter: Callable[[str], Any] = getattr(twistd_options, "get", lambda key: None)
    if getter("syslog"):
        return None
    stream: IO[str] | Any
    if settings.log_json is not None:
        if settings.log_json == "-":
            stream = sys.stdout
        else:
            stream = open(settings.log_json, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        observer = jsonFileLogObserver(stream)
    else:
        logfile = getter("logfile") or "-"
        stream = sys.stdout if logfile == "-" else LogFile.fromFullPath(logfile)
        observer = textFileLogObserver(stream)
    return FilteringLogObserver(
        observer, [LogLevelFilterPredicate(defaultLogLevel=settings.log_level)]
    )


class _TwistdService(MultiService):
    """
    The service C{makeService} returns: the server, plus what only a standalone process
    needs (its log observer; exit with one line when a port cannot be bound).
    """

    def __init__(self, server: Any, log_observer: ILogObserver | None, reactor: Any) -> None:
        super().__init__()
        self.server = server
        self._log_observer = log_observer
        self._reactor = reactor
        server.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        """
        Join C{parent}; when it is twistd's application, offer it the log observer (twistd
        uses it unless given C{--logger}).
        """
        super().setServiceParent(parent)
        if (
            self._log_observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver, None) is None
        ):
            parent.setComponent(ILogObserver, self._log_observer)

    def startService(self) -> None:
        """Start the server; a listening failure ends the process with one line."""
        super().startService()
        listening: Deferred[Any] = self.server.listening
        failures: list[Failure] = []
        synchronous = True

        def failed(failure: Failure) -> None:
            if synchronous:
                failures.append(failure)
                return
            _log.critical("cannot listen: {reason}", reason=_describe(failure))
            self._reactor.stop()

        listening.addErrback(failed)
        synchronous = False
        if failures:
            raise SystemExit(f"twistd bulklq: {_describe(failures[0])}")


def _describe(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, FirstError):  # from gatherResults
        return _describe(error.subFailure)
    return str(error) or type(error).__name__


def makeService(options: Options) -> IService:
    """The Bulk Leasequery service for C{options}; exits with one line on a startup error."""
    from twisted.internet import reactor  # noqa: PLC0415 - twistd has installed its reactor

    from .service import BulkLeasequeryService  # noqa: PLC0415 - keeps --help fast
    from .stores import open_store  # noqa: PLC0415

    settings = options.settings
    assert settings is not None, "parseOptions() was not called"
    try:
        server_duid = settings.server_duid or load_or_create_server_duid(settings.state_dir)
        config = settings.server_config(server_duid)
        store = open_store(settings.store_uri, reactor)
        active = settings.active_config()
    except (ConfigError, ValueError, OSError) as error:
        raise SystemExit(f"twistd bulklq: {error}") from None
    try:
        server = BulkLeasequeryService(
            store,
            config,
            listen=settings.listen,
            udp=settings.udp,
            metrics=settings.metrics,
            reactor=reactor,
            active=active,
            history_window=settings.history_window,
            history_size=settings.history_size,
        )
    except ValueError as error:
        raise SystemExit(
            f"twistd bulklq: --active-leasequery: {error} (--store {settings.store_uri})"
        ) from None
    observer = _log_observer(settings, getattr(options, "parent", None))
    return _TwistdService(server, observer, reactor)
