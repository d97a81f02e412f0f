"""
Binding stores, and the registry that opens one from a store URI (C{twistd bulklq --store}).

Built-in schemes (each module is imported only when its scheme is used):

  - C{memory:} or C{memory:PATH}: L{bulklq.stores.memory}, empty or loaded from a JSON lines
    file (L{bulklq.stores.jsonl}).
  - C{sqlite:PATH}: L{bulklq.stores.sqlite}, the embedded default.
  - C{kea-csv:PATH}: L{bulklq.stores.kea_csv}, ISC Kea's memfile lease file
    (C{kea-csv:/var/lib/kea/kea-leases6.csv?kea-config=/etc/kea/kea-dhcp6.conf}).
  - C{postgresql://...} (or C{postgres://...}): L{bulklq.stores.postgresql}, Kea's lease
    database, wrapped by L{bulklq.stores.postgresql_changes} to publish its changes for
    Active Leasequery (C{?changes=off}: the plain store).

Options ride in the URI's query string (C{?name=value&...}); each scheme documents its own.

B{Writing an opener.} A scheme maps to C{"module:function"}; the function is::

    def open_store_uri(uri: str, reactor) -> IBindingStore

It receives the whole URI text (scheme included) and the reactor the service runs on (for
clocks, threads and timers), and returns the store synchronously: L{open_store} runs while
C{twistd} builds its service, before the reactor starts. A store that needs slow or
asynchronous start-up returns at once and answers its first queries when ready (a C{fetch}
Deferred may wait). On a bad URI, option or unreadable file it raises C{ValueError} (or a
subclass) or C{OSError} with one line that names the problem; L{open_store} passes those
through. Register a third-party scheme with L{register_store_scheme}, or add it to
L{SCHEMES} before L{open_store} runs.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import parse_qsl, unquote

from ..interfaces import IBindingStore

__all__ = [
    "SCHEMES",
    "StoreOpener",
    "StoreURIError",
    "open_store",
    "register_store_scheme",
    "split_store_uri",
    "store_scheme",
]

#: What an opener is: C{(uri, reactor) -> IBindingStore}.
StoreOpener = Callable[[str, Any], IBindingStore]

#: Scheme name -> C{"module:function"} (imported on first use) or the opener itself.
SCHEMES: dict[str, str | StoreOpener] = {
    "memory": "bulklq.stores.memory:open_store_uri",
    "sqlite": "bulklq.stores.sqlite:open_store_uri",
    "kea-csv": "bulklq.stores.kea_csv:open_store_uri",
    "postgresql": "bulklq.stores.postgresql_changes:open_store_uri",
    "postgres": "bulklq.stores.postgresql_changes:open_store_uri",
}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class StoreURIError(ValueError):
    """A store URI is malformed, names an unknown scheme, or its store cannot be loaded."""


def _known() -> str:
    return ", ".join(f"{scheme}:" for scheme in sorted(SCHEMES))


def store_scheme(uri: str) -> str:
    """
    The scheme of C{uri}, lower-cased.

    @raise StoreURIError: if C{uri} does not start with C{SCHEME:}.
    """
    match = _SCHEME.match(uri.strip())
    if match is None:
        raise StoreURIError(f"store URI {uri!r} has no scheme; known schemes: {_known()}")
    return match.group(1).lower()


def split_store_uri(
    uri: str, scheme: str, options: Collection[str] = ()
) -> tuple[str, dict[str, str]]:
    """
    The path and options of C{SCHEME:PATH?name=value&...}, for openers.

    The path is percent-decoded (C{sqlite:/var/lib/bulklq/leases.db},
    C{sqlite:relative.db}, C{sqlite:///absolute.db}); a repeated option keeps its last value.

    @param scheme: the scheme's name for messages (the URI's own scheme may be an alias).
    @param options: the option names the scheme accepts.
    @raise StoreURIError: for a URI without a scheme, malformed options or an unknown option.
    """
    rest = uri.strip()[len(store_scheme(uri)) + 1 :]
    path, _, query = rest.partition("?")
    if path.startswith("//"):
        path = path[2:]
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise StoreURIError(f"{scheme}: malformed options {query!r}") from None
    values = dict(pairs)
    unknown = sorted(set(values) - set(options))
    if unknown:
        accepted = ", ".join(sorted(options)) or "none"
        raise StoreURIError(f"{scheme}: unknown option {unknown[0]!r} (accepted: {accepted})")
    return unquote(path), values


def register_store_scheme(scheme: str, opener: str | StoreOpener) -> None:
    """
    Make C{SCHEME:...} URIs open with C{opener}: a C{"module:function"} text (imported on
    first use) or the function itself. Replaces an earlier registration of C{scheme}.

    @raise StoreURIError: if C{scheme} or a C{"module:function"} text is malformed.
    """
    if _SCHEME.match(scheme + ":") is None:
        raise StoreURIError(f"{scheme!r} is not a URI scheme name")
    if isinstance(opener, str) and _TARGET.match(opener) is None:
        raise StoreURIError(f"store opener {opener!r} is not 'module:function'")
    SCHEMES[scheme.lower()] = opener


def _resolve(scheme: str, target: str | StoreOpener) -> StoreOpener:
    if not isinstance(target, str):
        return target
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise StoreURIError(
            f"the {scheme}: store is unavailable: {error} (is its extra installed?)"
        ) from None
    opener = getattr(module, function_name, None)
    if not callable(opener):
        raise StoreURIError(f"the {scheme}: store's opener {target!r} does not exist")
    resolved: StoreOpener = opener
    return resolved


def open_store(uri: str, reactor: Any) -> IBindingStore:
    """
    Open the store C{uri} names, synchronously.

    @param reactor: passed to the opener (clock, threads, timers).
    @raise StoreURIError: for a URI without a scheme, an unknown scheme, or a store whose
        module cannot be imported.
    @raise ValueError: (or a subclass) or C{OSError} from the opener, for bad options or
        an unreadable file; the message is one line.
    """
    scheme = store_scheme(uri)
    target = SCHEMES.get(scheme)
    if target is None:
        raise StoreURIError(f"unknown store scheme {scheme!r} in {uri!r}; known: {_known()}")
    store = _resolve(scheme, target)(uri.strip(), reactor)
    if not IBindingStore.providedBy(store):
        raise StoreURIError(f"the {scheme}: opener returned {store!r}, not an IBindingStore")
    return store
