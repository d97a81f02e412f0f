"""
The settings of C{twistd bulklq}: command-line options and the TOML config file, merged.

Every option in L{OPTIONS} can be given on the command line (C{--max-connections 20}) or as
a key of the same name in the config file (C{max-connections = 20}); the command line wins.
L{resolve} validates everything and raises L{ConfigError} with one line naming the bad
option (C{--data-timeout}) or config key (C{bulklq.toml: data-timeout}).

The result is a L{Settings}, from which L{Settings.server_config} builds the
L{ServerConfig<bulklq.config.ServerConfig>} the server takes.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from constantly import NamedConstant  # type: ignore[import-untyped]
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel

from .config import AccessRule, ConfigError, ServerConfig, parse_access_rule
from .stores import SCHEMES, store_scheme
from .wire import LEASEQUERY_PORT, Duid, OptionCode, WireError

__all__ = [
    "DEFAULT_LISTEN",
    "OPTIONS",
    "OptionSpec",
    "Settings",
    "check_tls_files",
    "default_state_dir",
    "read_config_file",
    "resolve",
    "tcp_endpoint_address",
    "tls_listen_description",
]

#: RFC 5460 section 5.2: TCP port 547, here on every address, IPv4 and IPv6 (dual stack).
DEFAULT_LISTEN = f"tcp6:{LEASEQUERY_PORT}:interface=\\:\\:"

_LOG_LEVELS = {"debug", "info", "warn", "error", "critical"}


@attrs.frozen
class OptionSpec:
    """
    One setting: its option name (also its config-file key), help text and parser.

    @ivar name: the long option name without dashes, and the config-file key.
    @ivar help: one line for C{--help} and the configuration reference.
    @ivar default: the default as the reference shows it.
    @ivar parse: turns a command-line string or a TOML value into the setting's value;
        raises L{ConfigError} (or C{ValueError}) with a message that does not repeat the name.
    @ivar kind: C{"value"}, C{"list"} (repeatable option, TOML array) or C{"flag"}.
    @ivar rfc: the RFC section the setting comes from, if any.
    """

    name: str
    help: str
    default: str
    parse: Callable[[Any], Any]
    kind: str = "value"
    rfc: str = ""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, not {value!r}")
    if not value.strip():
        raise ConfigError("must not be empty")
    return value.strip()


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"must be a positive integer, not {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise ConfigError(f"must be a positive integer, not {value!r}") from None
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be a positive integer, not {value!r}")
    return value


def _positive_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"must be a positive number of seconds, not {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"must be a positive number of seconds, not {value!r}") from None
    if not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ConfigError(f"must be a positive number of seconds, not {value!r}")
    return float(value)


def _requestor_pattern(value: Any) -> str:
    from .server import RequestorAllowList  # noqa: PLC0415 - keeps --help fast

    pattern = _text(value)
    RequestorAllowList.parse([pattern])
    return pattern


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, not {value!r}")
    return value


def _endpoint(value: Any) -> str:
    text = _text(value)
    if text.startswith("systemd:"):
        # Resolved only under systemd, where the socket is passed to us.
        return text
    plain = tls_listen_description(text)
    try:
        serverFromString(MemoryReactor(), text if plain is None else plain)
    except Exception as error:  # endpoint parsers raise anything from ValueError to KeyError
        raise ConfigError(f"{text!r} is not a server endpoint ({error})") from None
    return text


def _store_uri(value: Any) -> str:
    text = _text(value)
    scheme = store_scheme(text)  # StoreURIError is a ValueError: reported with the option
    if scheme not in SCHEMES:
        known = ", ".join(f"{name}:" for name in sorted(SCHEMES))
        raise ConfigError(f"{text!r}: unknown store scheme {scheme!r} (known: {known})")
    return text


def _access_rule(value: Any) -> AccessRule:
    return parse_access_rule(_text(value))


def _option_code(item: Any) -> int:
    if isinstance(item, int) and not isinstance(item, bool):
        code = item
    elif isinstance(item, str):
        name = item.strip().upper().replace("-", "_")
        if name.isdigit():
            code = int(name)
        else:
            member = OptionCode.__members__.get(name) or OptionCode.__members__.get(
                f"OPTION_{name}"
            )
            if member is None:
                raise ConfigError(
                    f"{item!r} is not an option code or name (e.g. 47, lq-relay-data)"
                )
            code = int(member)
    else:
        raise ConfigError(f"{item!r} is not an option code or name")
    if not 0 < code <= 0xFFFF:
        raise ConfigError(f"option code {code} is not 1..65535")
    return code


def _option_codes(value: Any) -> frozenset[int]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"must be a list of option codes, not {value!r}")
    return frozenset(
        _option_code(item) for item in items if not isinstance(item, str) or item.strip()
    )


def _duid(value: Any) -> Duid:
    try:
        return Duid.from_text(_text(value))
    except WireError as error:
        raise ConfigError(str(error.reason)) from None


def _log_level(value: Any) -> NamedConstant:
    name = _text(value).lower()
    name = {"warning": "warn", "fatal": "critical"}.get(name, name)
    if name not in _LOG_LEVELS:
        raise ConfigError(f"{value!r} is not a log level ({', '.join(sorted(_LOG_LEVELS))})")
    return LogLevel.levelWithName(name)


def _path(value: Any) -> Path:
    return Path(_text(value)).expanduser()


#: Keywords of an C{ssl:} server endpoint that bring their own certificate or TLS settings.
_SSL_OWN_KEYWORDS = ("privatekey", "certkey", "sslmethod", "extracertchain", "dhparameters")


def tls_listen_description(description: str) -> str | None:
    """
    For an C{ssl:} endpoint description, the C{tcp:} description of the same port,
    interface and backlog: bulklq listens there and runs TLS itself with the
    C{--tls-cert}/C{--tls-key}/C{--tls-ca} settings (mutual authentication). C{None} for
    other endpoint types.

    @raise ConfigError: an C{ssl:} description with its own C{privateKey}, C{certKey} or
        other TLS keyword (Twisted's C{ssl:} endpoint cannot require requestor
        certificates, so bulklq does not use it).
    """
    kind, colon, rest = description.partition(":")
    if kind.lower() != "ssl" or not colon:
        return None
    for part in _split_endpoint(rest):
        keyword = part.partition("=")[0].lower()
        if "=" in part and keyword in _SSL_OWN_KEYWORDS:
            raise ConfigError(
                f"{description!r}: ssl: listeners take their certificate, key and CA from "
                f"--tls-cert, --tls-key and --tls-ca (mutual TLS); remove {keyword}="
            )
    return f"tcp:{rest}"


#: Every setting, in the order C{--help} and the configuration reference list them.
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "listen",
        "Endpoint to accept Bulk Leasequery connections on (repeatable): tcp6:PORT:interface=..., "
        "tcp:..., ssl:..., systemd:domain=INET6:index=0.",
        DEFAULT_LISTEN,
        _endpoint,
        "list",
        "RFC 5460 5.2",
    ),
    OptionSpec(
        "store",
        "Binding store URI: sqlite:PATH, memory:[BINDINGS.jsonl], kea-csv:PATH, postgresql://...",
        "sqlite:STATE-DIR/bindings.sqlite3",
        _store_uri,
    ),
    OptionSpec(
        "allow",
        "Requestors allowed to connect, CIDR[:query-types] (repeatable; types by name or 1-5).",
        "::1/128 and 127.0.0.0/8 (this host only)",
        _access_rule,
        "list",
        "RFC 5460 7.1, RFC 5007 4.4.1",
    ),
    OptionSpec(
        "max-connections",
        "Connections accepted at once (BULK_LQ_MAX_CONNS).",
        "10",
        _positive_int,
        rfc="RFC 5460 5.6, 7.1",
    ),
    OptionSpec(
        "max-connections-per-requestor",
        "Connections accepted at once from one requestor address.",
        "4",
        _positive_int,
        rfc="RFC 5460 7.1, 8",
    ),
    OptionSpec(
        "max-queries-per-connection",
        "Queries processed at once on one connection; reading pauses at the limit.",
        "4",
        _positive_int,
        rfc="RFC 5460 7.3",
    ),
    OptionSpec(
        "data-timeout",
        "Seconds a partly read query or a blocked reply may last (BULK_LQ_DATA_TIMEOUT).",
        "300",
        _positive_seconds,
        rfc="RFC 5460 5.6, 7.1, 7.2",
    ),
    OptionSpec(
        "idle-timeout",
        "Seconds a connection with no query in progress is kept open.",
        "300",
        _positive_seconds,
        rfc="RFC 5460 7.4",
    ),
    OptionSpec(
        "store-timeout",
        "Seconds the store may take for one page before the query ends with QueryTerminated.",
        "30",
        _positive_seconds,
    ),
    OptionSpec(
        "page-size",
        "Bindings fetched from the store per page.",
        "1000",
        _positive_int,
    ),
    OptionSpec(
        "sensitive-options",
        "Option codes never returned even when a query's ORO asks (comma list, e.g. 47,37).",
        "none",
        _option_codes,
        rfc="RFC 5007 4.4.2",
    ),
    OptionSpec(
        "shutdown-grace",
        "Seconds in-flight queries get to finish at shutdown before DONE(QueryTerminated).",
        "10",
        _positive_seconds,
        rfc="RFC 5460 7.4",
    ),
    OptionSpec(
        "server-duid",
        "This server's DUID in hex (00:01:00:01:...); default: generated once, kept in STATE-DIR.",
        "DUID-LLT in STATE-DIR/server-id",
        _duid,
        rfc="RFC 8415 11, RFC 5007 4.2.1",
    ),
    OptionSpec(
        "state-dir",
        "Directory for the server-id file and the default SQLite store.",
        "$STATE_DIRECTORY, else /var/lib/bulklq (root) or ~/.local/state/bulklq",
        _path,
    ),
    OptionSpec(
        "tls-cert",
        "This server's TLS certificate (PEM), for STARTTLS and ssl: listeners; with --tls-key "
        "and --tls-ca.",
        "off (no TLS)",
        _path,
        rfc="RFC 7653 9.1",
    ),
    OptionSpec(
        "tls-key",
        "The private key (PEM, unencrypted) of --tls-cert.",
        "off",
        _path,
        rfc="RFC 7653 9.1",
    ),
    OptionSpec(
        "tls-ca",
        "The CA certificate (PEM) that must have signed every requestor's certificate "
        "(mutual TLS).",
        "off",
        _path,
        rfc="RFC 7653 9.1, RFC 7525",
    ),
    OptionSpec(
        "tls-requestor",
        "Accept only requestor certificates naming this DNS name (subjectAltName or CN), IP "
        "address (subjectAltName) or sha256:FINGERPRINT (repeatable; needs --tls-ca).",
        "any certificate signed by --tls-ca",
        _requestor_pattern,
        "list",
        "RFC 7653 9.1",
    ),
    OptionSpec(
        "active-leasequery",
        "Serve Active Leasequery (ACTIVELEASEQUERY): a live stream of binding changes; over "
        "TLS only, unless --active-without-tls.",
        "off",
        _flag,
        "flag",
        "RFC 7653",
    ),
    OptionSpec(
        "active-without-tls",
        "Also serve Active Leasequery on connections without TLS (needs --active-leasequery).",
        "off",
        _flag,
        "flag",
        "RFC 7653 9.1",
    ),
    OptionSpec(
        "history-window",
        "Seconds of binding changes kept for Active Leasequery catch-up (OPTION_LQ_START_TIME).",
        "3600",
        _positive_seconds,
        rfc="RFC 7653 8.4.1, 9.3",
    ),
    OptionSpec(
        "history-size",
        "Distinct bindings whose latest change is kept for catch-up; older changes are "
        "dropped first (a catch-up from before them gets DataMissing).",
        "100000",
        _positive_int,
        rfc="RFC 7653 8.4.1, 9.3",
    ),
    OptionSpec(
        "active-backlog",
        "Bindings waiting to be sent on one active connection before the requestor is "
        "dropped as unable to keep up.",
        "10000",
        _positive_int,
        rfc="RFC 7653 7, 9.3",
    ),
    OptionSpec(
        "udp",
        "Also answer UDP Leasequery (RFC 5007) on the --listen addresses and ports.",
        "off",
        _flag,
        "flag",
        "RFC 5007, RFC 5460 4",
    ),
    OptionSpec(
        "metrics",
        "Endpoint serving Prometheus metrics at /metrics (e.g. tcp:9547:interface=127.0.0.1).",
        "off",
        _endpoint,
    ),
    OptionSpec(
        "log-level",
        "Lowest level logged: debug, info, warn, error, critical.",
        "info",
        _log_level,
    ),
    OptionSpec(
        "log-json",
        "Write the log as JSON lines to this file ('-': standard output) instead of text.",
        "off (text log)",
        _text,
    ),
)

_SPECS = {spec.name: spec for spec in OPTIONS}


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """
    Where state lives when C{--state-dir} is not given: systemd's C{$STATE_DIRECTORY}, else
    C{/var/lib/bulklq} for root, else C{$XDG_STATE_HOME/bulklq} (C{~/.local/state/bulklq}).
    """
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/bulklq")
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local/state")
    return Path(base).expanduser() / "bulklq"


@attrs.frozen
class Settings:
    """Everything C{twistd bulklq} was told, validated, with defaults filled in."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    store: str | None = None
    allow: tuple[AccessRule, ...] | None = None
    max_connections: int | None = None
    max_connections_per_requestor: int | None = None
    max_queries_per_connection: int | None = None
    data_timeout: float | None = None
    idle_timeout: float | None = None
    store_timeout: float | None = None
    page_size: int | None = None
    sensitive_options: frozenset[int] = frozenset()
    shutdown_grace: float | None = None
    server_duid: Duid | None = None
    state_dir: Path = Path("/var/lib/bulklq")
    udp: bool = False
    metrics: str | None = None
    log_level: NamedConstant = LogLevel.info
    log_json: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_requestor: tuple[str, ...] = ()
    active_leasequery: bool = False
    active_without_tls: bool = False
    history_window: float | None = None
    history_size: int | None = None
    active_backlog: int | None = None

    @property
    def tls(self) -> bool:
        """Whether TLS is configured (the three C{--tls-*} files)."""
        return self.tls_cert is not None

    @property
    def store_uri(self) -> str:
        """The store URI, defaulting to the embedded SQLite database in the state directory."""
        if self.store is not None:
            return self.store
        return f"sqlite:{self.state_dir / 'bindings.sqlite3'}"

    def server_config(self, server_duid: Duid) -> ServerConfig:
        """The server's configuration, given the DUID (from here or the state file)."""
        fields = {
            name: getattr(self, name)
            for name in (
                "allow",
                "max_connections",
                "max_connections_per_requestor",
                "max_queries_per_connection",
                "data_timeout",
                "idle_timeout",
                "store_timeout",
                "page_size",
                "shutdown_grace",
            )
            if getattr(self, name) is not None
        }
        return ServerConfig(
            server_duid=server_duid, sensitive_options=self.sensitive_options, **fields
        )

    def tls_options(self) -> Any:
        """
        The server's TLS options (mutual authentication against C{--tls-ca}, TLS 1.2 or
        later), or C{None} without C{--tls-*}.

        @raise ConfigError: a file that went bad since the settings were resolved.
        """
        if self.tls_cert is None or self.tls_key is None or self.tls_ca is None:
            return None
        check_tls_files(self.tls_cert, self.tls_key, self.tls_ca)
        from .server import tls_options  # noqa: PLC0415 - needs pyOpenSSL, keeps --help fast

        return tls_options(self.tls_cert, self.tls_key, self.tls_ca, self.tls_requestor)

    def active_config(self) -> Any:
        """The server's L{ActiveConfig<bulklq.server.ActiveConfig>} (RFC 7653)."""
        from .server import ActiveConfig  # noqa: PLC0415

        fields: dict[str, Any] = {}
        if self.active_backlog is not None:
            fields["max_backlog"] = self.active_backlog
        return ActiveConfig(
            enabled=self.active_leasequery,
            allow_insecure=self.active_without_tls,
            tls=self.tls_options(),
            **fields,
        )


#: The option that names each TLS file, for one-line errors.
_TLS_OPTIONS = {"cert": "--tls-cert", "key": "--tls-key", "ca": "--tls-ca"}


def check_tls_files(cert: Path, key: Path, ca: Path) -> None:
    """
    Check the three TLS files: readable, PEM, the key matching the certificate, exactly
    one CA certificate (L{bulklq.server.load_tls_files} does the checking).

    @raise ConfigError: one line naming the option and the problem.
    """
    try:
        import OpenSSL  # noqa: F401, PLC0415 - what Twisted's TLS needs (the tls extra)

        from .server import TLSFileError, load_tls_files  # noqa: PLC0415
    except ImportError:
        raise ConfigError("--tls-cert: TLS needs pyOpenSSL: pip install 'bulklq[tls]'") from None
    try:
        load_tls_files(cert, key, ca)
    except TLSFileError as error:
        raise ConfigError(f"{_TLS_OPTIONS[error.which]}: {error.problem}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """
    Read a TOML config file; keys are the long option names.

    @raise ConfigError: if the file cannot be read, is not TOML, or has an unknown key.
    """
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except OSError as error:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    for key in data:
        if key not in _SPECS:
            raise ConfigError(f"{path}: unknown key {key!r}")
    return data


def _parse(spec: OptionSpec, raw: Any, where: str) -> Any:
    try:
        if spec.kind == "list":
            items = [raw] if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple):
                raise ConfigError(f"must be a list of strings, not {raw!r}")
            return tuple(spec.parse(item) for item in items)
        return spec.parse(raw)
    except (ConfigError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None


def resolve(
    command_line: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """
    Merge the command line over the config file over the defaults, validating each value.

    @param command_line: option name to raw value, for the options actually given (lists for
        repeatable options, C{True} for flags).
    @param environ: the environment (for the default state directory); C{os.environ} if
        C{None}.
    @param config_file: a TOML file whose keys are option names.
    @raise ConfigError: naming the first bad option or key.
    """
    file_values = read_config_file(config_file) if config_file is not None else {}
    values: dict[str, Any] = {}
    for spec in OPTIONS:
        if spec.name in command_line and command_line[spec.name] not in (None, [], ()):
            values[spec.name] = _parse(spec, command_line[spec.name], f"--{spec.name}")
        elif spec.name in file_values:
            values[spec.name] = _parse(spec, file_values[spec.name], f"{config_file}: {spec.name}")
    if "listen" in values and not values["listen"]:
        raise ConfigError(f"{config_file}: listen: needs at least one endpoint")
    if "state-dir" not in values:
        values["state-dir"] = default_state_dir(os.environ if environ is None else environ)
    settings = Settings(**{name.replace("-", "_"): value for name, value in values.items()})
    _check_tls(settings)
    if settings.udp:
        for endpoint in settings.listen:
            if endpoint.lower().startswith("ssl:"):
                continue  # TLS-only: no UDP counterpart, the tcp ones give UDP its ports
            if tcp_endpoint_address(endpoint) is None:
                raise ConfigError(
                    f"--udp: needs tcp or tcp6 --listen endpoints to take addresses from, "
                    f"not {endpoint!r}"
                )
    return settings


def _check_tls(settings: Settings) -> None:
    """The TLS and Active Leasequery options that only make sense together."""
    given = {
        "--tls-cert": settings.tls_cert,
        "--tls-key": settings.tls_key,
        "--tls-ca": settings.tls_ca,
    }
    missing = [name for name, value in given.items() if value is None]
    if missing and len(missing) < 3:
        present = next(name for name, value in given.items() if value is not None)
        raise ConfigError(
            f"{present}: --tls-cert, --tls-key and --tls-ca go together; "
            f"missing {' and '.join(missing)}"
        )
    if settings.tls_cert is not None and settings.tls_key and settings.tls_ca:
        check_tls_files(settings.tls_cert, settings.tls_key, settings.tls_ca)
    if settings.tls_requestor and not settings.tls:
        raise ConfigError("--tls-requestor: needs --tls-cert, --tls-key and --tls-ca")
    for endpoint in settings.listen:
        if tls_listen_description(endpoint) is not None and not settings.tls:
            raise ConfigError(f"--listen: {endpoint!r} needs --tls-cert, --tls-key and --tls-ca")
    if settings.active_without_tls and not settings.active_leasequery:
        raise ConfigError("--active-without-tls: needs --active-leasequery")
    if settings.active_leasequery and not (settings.tls or settings.active_without_tls):
        raise ConfigError(
            "--active-leasequery: needs --tls-cert, --tls-key and --tls-ca (RFC 7653 9.1), "
            "or --active-without-tls to serve it unencrypted"
        )


def _split_endpoint(description: str) -> list[str]:
    """Split an endpoint description on unescaped colons, removing the escapes."""
    parts: list[str] = [""]
    escaped = False
    for char in description:
        if escaped:
            parts[-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("")
        else:
            parts[-1] += char
    return parts


def tcp_endpoint_address(description: str) -> tuple[str, int] | None:
    """
    The (interface, port) a C{tcp:} or C{tcp6:} endpoint description listens on, for the
    UDP listener that shares it; C{None} for other endpoint types.
    """
    parts = _split_endpoint(description)
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6") or len(parts) < 2:
        return None
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in parts[1:]:
        key, equals, value = part.partition("=")
        if equals:
            keywords[key] = value
        else:
            positional.append(part)
    port_text = keywords.get("port", positional[0] if positional else "")
    try:
        port = int(port_text)
    except ValueError:
        return None
    default_interface = "::" if kind == "tcp6" else ""
    interface = keywords.get("interface", positional[2] if len(positional) > 2 else None)
    return (default_interface if interface is None else interface, port)


def option_names() -> Sequence[str]:
    """The long option names (and config-file keys), in reference order."""
    return [spec.name for spec in OPTIONS]
