"""The pynetdicom internals radnode's patches replace or read, and the shape each must have.

A pynetdicom release that renamed one would not fail where the cause is: a patch would sit on a
name nothing calls, or an association would fail in flight. ``mismatched_internals`` compares
every internal with the shape the patches were written against (a method's parameters, the names
its code uses, a state machine action and its next state) and names the radnode modules that rely
on it; ``node.dicomnet.patches`` decides from them which patches it may install. A patch keeps
pynetdicom's function as ``__wrapped__`` (``replacing``), so the check reads pynetdicom's code.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pynetdicom
import pynetdicom.association
import pynetdicom.dul
from pynetdicom import _config, fsm
from pynetdicom.association import Association
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import AssociationServer, AssociationSocket

#: The pynetdicom releases whose internals the patches were written against (pyproject.toml).
SUPPORTED = (3, 0)
REQUIREMENT = "pynetdicom>=3.0,<3.1"
INSTALL = "pip install 'pynetdicom>=3.0,<3.1'"

REACTOR = "node/dicomnet/reactor.py"
SENDING = "node/dicomnet/sending.py"
RESPONSES = "node/dicomnet/responses.py"
GUARD = "node/dicomnet/pdu_guard.py"
STREAM = "node/receive/pdata_stream.py"
#: The receiver's C-STORE handler on stock pynetdicom (when the speed-ups are off).
STOCK = "node/receive/stock_store.py"
_SCP = "node/receive/scp.py"
_CSTORE = "node/deliver/cstore.py"
_PATCHES = (REACTOR, SENDING, RESPONSES, GUARD, STREAM)

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Mismatch:
    """One internal that is not what a patch expects."""

    #: What the patch relies on, e.g. ``DULServiceProvider._read_pdu_data(self)``.
    expected: str
    #: What the installed pynetdicom has instead.
    found: str
    #: The radnode modules that rely on it, to update for the new internals.
    modules: tuple[str, ...]


class PynetdicomMismatch(RuntimeError):
    """The installed pynetdicom is not the one radnode's patches of its internals fit."""

    def __init__(self, version: str, mismatches: list[Mismatch]) -> None:
        self.version = version
        self.mismatches = mismatches
        modules = sorted({module for mismatch in mismatches for module in mismatch.modules}) or list(_PATCHES)
        lines = [f"pynetdicom {version} is installed, but radnode patches the internals of pynetdicom "
                 f"{SUPPORTED[0]}.{SUPPORTED[1]} ({REQUIREMENT}), and these differ:"]
        lines += [f"  - expected {m.expected}, found {m.found}" + (f" ({', '.join(m.modules)})" if m.modules else "")
                  for m in mismatches]
        lines.append(f"Install {REQUIREMENT} ({INSTALL}) or update {', '.join(modules)} for the new internals, "
                     "then the pinned range in pyproject.toml and node/dicomnet/internals.py.")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Function:
    """A pynetdicom function or method a patch replaces or calls."""

    name: str
    get: Callable[[], Any]
    params: tuple[str, ...]
    #: Names its code must use: the attributes a constructor sets, what a loop sleeps with.
    uses: tuple[str, ...]
    modules: tuple[str, ...]


def _functions() -> tuple[Function, ...]:
    dul, assoc, dimse = DULServiceProvider, Association, DIMSEServiceProvider
    return (
        Function("DULServiceProvider.__init__", lambda: dul.__init__, ("self", "assoc"),
                 ("socket", "event_queue", "to_provider_queue", "to_user_queue", "_recv_pdu", "artim_timer",
                  "state_machine"),
                 (REACTOR, GUARD, STREAM)),
        Function("DULServiceProvider.run_reactor", lambda: dul.run_reactor, ("self",), ("time", "sleep"), (REACTOR,)),
        Function("DULServiceProvider.kill_dul", lambda: dul.kill_dul, ("self",), ("_kill_thread",), (REACTOR,)),
        Function("DULServiceProvider._read_pdu_data", lambda: dul._read_pdu_data, ("self",),
                 ("_decode_pdu", "event_queue", "_recv_pdu"), (GUARD,)),
        Function("DULServiceProvider._decode_pdu", lambda: dul._decode_pdu, ("self", "bytestream"), (), (GUARD,)),
        Function("DULServiceProvider.send_pdu", lambda: dul.send_pdu, ("self", "primitive"),
                 ("to_provider_queue",), (SENDING, STREAM)),
        Function("Association.__init__", lambda: assoc.__init__, ("self", "ae", "mode"),
                 ("requestor", "_accepted_cx", "dul", "dimse", "_reactor_checkpoint", "_kill"), (REACTOR, STREAM)),
        Function("Association.send_c_store", lambda: assoc.send_c_store,
                 ("self", "dataset", "msg_id", "priority", "originator_aet", "originator_id"),
                 ("_dataset_path", "send_msg", "_reactor_checkpoint", "_is_paused", "get_msg", "_handle_no_response"),
                 (SENDING,)),
        Function("Association._handle_no_response", lambda: assoc._handle_no_response, ("self",), (), (SENDING,)),
        Function("DIMSEServiceProvider.receive_primitive", lambda: dimse.receive_primitive, ("self", "primitive"),
                 ("message", "decode_msg", "message_to_primitive", "msg_queue"), (RESPONSES,)),
        Function("DIMSEServiceProvider.get_msg", lambda: dimse.get_msg, ("self", "block"), ("msg_queue",), (SENDING,)),
        Function("Association._run_reactor", lambda: assoc._run_reactor, ("self",),
                 ("time", "sleep", "_reactor_checkpoint", "_serve_request"), (REACTOR,)),
        Function("Association._serve_request", lambda: assoc._serve_request, ("self", "msg", "context_id"), (),
                 (REACTOR,)),
        Function("AssociationSocket.__init__", lambda: AssociationSocket.__init__,
                 ("self", "assoc", "client_socket", "address"), ("socket", "_create_socket"), (SENDING, GUARD)),
        Function("AssociationSocket._create_socket", lambda: AssociationSocket._create_socket,
                 ("self", "address"), (), (SENDING,)),
        Function("AssociationServer.get_request", lambda: AssociationServer.get_request, ("self",),
                 ("ssl_context",), (_SCP,)),
        Function("DIMSEServiceProvider.__init__", lambda: dimse.__init__, ("self", "assoc"), ("msg_queue",),
                 (REACTOR, STREAM)),
        Function("DIMSEServiceProvider.send_msg", lambda: dimse.send_msg, ("self", "primitive", "context_id"),
                 ("primitive_to_message", "encode_msg", "send_pdu"), (SENDING,)),
        Function("DIMSEMessage.encode_msg", lambda: DIMSEMessage.encode_msg,
                 ("self", "context_id", "max_pdu_length"), (), (SENDING,)),
        Function("StorageServiceClass.validate_status", lambda: StorageServiceClass.validate_status,
                 ("self", "status", "rsp"), (), (STREAM,)),
    )


#: The state machine actions a patch replaces or feeds: (action, function, next state, uses, modules).
#: DT-1 and AR-7 take the P-DATA request from the DUL's queue and send it (replaced by
#: node.dicomnet.sending); DT-2 takes a received PDU from ``_recv_pdu`` (which pdata_stream feeds).
_ACTIONS: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("DT-1", "DT_1", "Sta6", ("to_provider_queue",), (SENDING,)),
    ("AR-7", "AR_7", "Sta8", ("to_provider_queue",), (SENDING,)),
    ("DT-2", "DT_2", "Sta6", ("_recv_pdu", "to_primitive"), (STREAM,)),
)
_TRANSITIONS: tuple[tuple[tuple[str, str], str, tuple[str, ...]], ...] = (
    (("Evt9", "Sta6"), "DT-1", (SENDING, STREAM)),
    (("Evt9", "Sta8"), "AR-7", (SENDING,)),
    (("Evt10", "Sta6"), "DT-2", (GUARD, STREAM)),
)
#: States and events the PDU reader names (pdu_guard): idle, awaiting the A-ASSOCIATE-RQ,
#: established, awaiting close; a P-DATA-TF, the transport closed, an invalid PDU.
_STATES = ("Sta1", "Sta2", "Sta6", "Sta13")
_EVENTS = ("Evt10", "Evt17", "Evt19")
#: Properties the patches read, by class.
_PROPERTIES: tuple[tuple[type, tuple[str, ...], tuple[str, ...]], ...] = (
    (DULServiceProvider, ("assoc",), (GUARD, STREAM)),
    (Association, ("is_acceptor", "is_requestor", "network_timeout", "ae"), (REACTOR, GUARD)),
    (Association, ("accepted_contexts",), (_CSTORE,)),
    (DIMSEServiceProvider, ("dul", "assoc", "maximum_pdu_size"), (SENDING, STREAM)),
    (P_DATA, ("presentation_data_value_list",), (SENDING, STREAM)),
    (Event, ("dataset_path",), (STOCK,)),
)
#: pynetdicom's settings the receiver and the dispatcher set: a renamed one would be set in vain.
_SETTINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("UNRESTRICTED_STORAGE_SERVICE", (_SCP,)),
    ("LOG_HANDLER_LEVEL", (_SCP,)),
    ("STORE_SEND_CHUNKED_DATASET", (_CSTORE,)),
    ("STORE_RECV_CHUNKED_DATASET", (STOCK,)),
)


def replacing(original: Any, replacement: _F) -> _F:
    """Mark ``replacement`` as the patch standing in for pynetdicom's ``original`` (its
    ``__wrapped__``, as ``functools.wraps`` sets), so that ``check`` reads pynetdicom's code."""
    functools.update_wrapper(replacement, inspect.unwrap(original), assigned=(), updated=())
    return replacement


def check() -> None:
    """Raise PynetdicomMismatch unless the installed pynetdicom is the one the patches fit."""
    found = mismatches()
    if found:
        raise PynetdicomMismatch(version(), found)


def version() -> str:
    return str(getattr(pynetdicom, "__version__", "unknown"))


def mismatches() -> list[Mismatch]:
    """The installed pynetdicom's version outside the pinned range, and every internal that differs."""
    return list(_version_mismatch(version())) + list(mismatched_internals())


def _version_mismatch(version: str) -> Iterator[Mismatch]:
    if _minor(version) != SUPPORTED:
        yield Mismatch(f"version {REQUIREMENT.removeprefix('pynetdicom')}", version, ())


def _minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


def mismatched_internals() -> Iterator[Mismatch]:
    """Every internal that is not what the patches expect."""
    for function in _functions():
        yield from _function_mismatch(function)
    yield from _action_mismatches()
    yield from _data_mismatches()


def _function_mismatch(function: Function) -> Iterator[Mismatch]:
    expected = f"{function.name}({', '.join(function.params)})"
    try:
        original = inspect.unwrap(function.get())
        params = tuple(inspect.signature(original).parameters)
    except (AttributeError, TypeError, ValueError):
        yield Mismatch(expected, "no such function", function.modules)
        return
    if params != function.params:
        yield Mismatch(expected, f"{function.name}({', '.join(params)})", function.modules)
        return
    missing = _unused(original, function.uses)
    if missing:
        yield Mismatch(f"{function.name} using {', '.join(function.uses)}",
                       f"no {', '.join(missing)} in its code", function.modules)


def _unused(function: Any, names: tuple[str, ...]) -> list[str]:
    code = getattr(function, "__code__", None)
    used = set(code.co_names) if code is not None else set()
    return [name for name in names if name not in used]


def _action_mismatches() -> Iterator[Mismatch]:
    for action, function_name, next_state, uses, modules in _ACTIONS:
        expected = f"fsm.ACTIONS[{action!r}] = (description, {function_name}, {next_state!r})"
        entry = fsm.ACTIONS.get(action)
        if not isinstance(entry, tuple) or len(entry) != 3:
            yield Mismatch(expected, "no such action" if entry is None else repr(entry), modules)
            continue
        original = inspect.unwrap(entry[1])
        found_name = getattr(original, "__name__", repr(original))
        if found_name != function_name or entry[2] != next_state:
            yield Mismatch(expected, f"(description, {found_name}, {entry[2]!r})", modules)
            continue
        missing = _unused(original, uses)
        if missing:
            yield Mismatch(f"{function_name} using {', '.join(uses)}", f"no {', '.join(missing)} in its code",
                           modules)
    for key, action, modules in _TRANSITIONS:
        found = fsm.TRANSITION_TABLE.get(key)
        if found != action:
            yield Mismatch(f"fsm.TRANSITION_TABLE[{key!r}] = {action!r}", repr(found), modules)


def _data_mismatches() -> Iterator[Mismatch]:
    missing_states = [name for name in _STATES if name not in fsm.STATES]
    missing_events = [name for name in _EVENTS if name not in fsm.EVENTS]
    if missing_states or missing_events:
        yield Mismatch(f"fsm states {', '.join(_STATES)} and events {', '.join(_EVENTS)}",
                       f"no {', '.join(missing_states + missing_events)}", (GUARD, STREAM))
    for module in (pynetdicom.dul, pynetdicom.association):
        if not callable(getattr(getattr(module, "time", None), "sleep", None)):
            yield Mismatch(f"{module.__name__}.time.sleep (the reactor's sleep)", "none", (REACTOR,))
    if C_STORE not in _RQ_TO_MESSAGE or C_STORE not in _RSP_TO_MESSAGE:
        yield Mismatch("pynetdicom.dimse._RQ_TO_MESSAGE and _RSP_TO_MESSAGE keyed by primitive class",
                       "no C_STORE entry", (SENDING,))
    for cls, names, modules in _PROPERTIES:
        for name in names:
            if not isinstance(inspect.getattr_static(cls, name, None), property):
                yield Mismatch(f"property {cls.__name__}.{name}", "none", modules)
    for name, modules in _SETTINGS:
        if not hasattr(_config, name):
            yield Mismatch(f"setting pynetdicom._config.{name}", "none", modules)
