"""The patch table: every change radnode makes to pynetdicom, one row each, installed by ``install``.

A row names its target, what stands in for it, why, and the pynetdicom change that would retire
it. Only the PDU guard is mandatory: when ``node.dicomnet.internals`` finds that an optional
row's internals differ (another pynetdicom), the process logs one warning and runs on stock
pynetdicom with the guard alone, and the receiver stores through pynetdicom's own
``STORE_RECV_CHUNKED_DATASET`` (``node.receive.stock_store``). Each target is wrapped once. The
receiver's streaming P-DATA reader (``node.receive.pdata_stream``) is the guard's, with the speed-ups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynetdicom.association
import pynetdicom.dul
from pynetdicom import fsm
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from node import logs
from node.dicomnet import internals, pdu_guard, reactor, responses, sending
from node.dicomnet.internals import Mismatch, PynetdicomMismatch, replacing

#: The processes a row is installed in: the receiver's, and those that send (the dispatcher's).
RECEIVER, SENDER = "receiver", "sender"
_BOTH = frozenset({RECEIVER, SENDER})

_EVENT_DRIVEN = ("an event-driven reactor wait, or a setting for its sleep (the TODO in "
                 "DULServiceProvider.__init__; pydicom/pynetdicom#650 made the DUL sleep only when idle)")


@dataclass(frozen=True)
class Patch:
    """One change to pynetdicom: ``owner.name`` (or ``owner[name]``) becomes ``replace(original)``."""

    owner: Any
    name: str
    replace: Callable[[Any], Any]
    why: str
    retired_by: str
    mandatory: bool = False
    roles: frozenset[str] = _BOTH

    @property
    def target(self) -> str:
        owner = getattr(self.owner, "__qualname__", None) or getattr(self.owner, "__name__", "fsm.ACTIONS")
        return f"{owner}[{self.name!r}]" if isinstance(self.owner, dict) else f"{owner}.{self.name}"


def _by(function: Callable[..., Any]) -> Callable[[Any], Any]:
    """Replace pynetdicom's function with ``function`` (keeping it as ``__wrapped__``)."""
    return lambda original: replacing(original, function)


def _around(wrapper: Callable[..., Any]) -> Callable[[Any], Any]:
    """Replace a method with one calling ``wrapper(original, self, ...)``."""

    def replace(original: Any) -> Any:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return wrapper(original, self, *args, **kwargs)

        method.__doc__ = original.__doc__
        return replacing(original, method)

    return replace


def _action(function: Callable[..., str]) -> Callable[[Any], Any]:
    """Replace a state machine action's function, keeping its description and next state."""
    return lambda entry: (entry[0], replacing(entry[1], function), entry[2])


TABLE: tuple[Patch, ...] = (
    Patch(DULServiceProvider, "_read_pdu_data", _by(pdu_guard.read_pdu_data),
          "a PDU's length is checked at its header and its bytes have a deadline: a hostile peer "
          "cannot grow the receiver or hold its threads; nothing is read after an abort (Sta13)",
          "a hook for the PDU reader, or pynetdicom's reader enforcing the negotiated maximum, a "
          "deadline per PDU and closing in Sta13", mandatory=True, roles=frozenset({RECEIVER})),
    Patch(pynetdicom.dul, "time", lambda _: reactor.TIME,
          "the DUL thread waits on its socket and queues instead of polling every millisecond", _EVENT_DRIVEN),
    Patch(pynetdicom.association, "time", lambda _: reactor.TIME,
          "an association's thread waits on its message queue or for a pause, not 1 ms at a time",
          _EVENT_DRIVEN),
    Patch(DULServiceProvider, "__init__", _around(reactor.with_wake),
          "the DUL's queues wake its thread through an eventfd", _EVENT_DRIVEN),
    Patch(DULServiceProvider, "run_reactor", _around(reactor.closing_wake),
          "the eventfd is closed when the reactor ends, and the association's thread woken", _EVENT_DRIVEN),
    Patch(DULServiceProvider, "kill_dul", _around(reactor.waking),
          "a killed DUL thread is woken at once", _EVENT_DRIVEN),
    Patch(Association, "__init__", _around(reactor.with_checkpoint),
          "the reactor checkpoint says when a pause is asked, so a requested association's thread "
          "waits for that", _EVENT_DRIVEN),
    Patch(Association, "_serve_request", _around(reactor.handing_back_responses),
          "a response the reactor takes in the race of send_c_store's pause goes back to the caller "
          "instead of being dropped (the delivery then waited out its DIMSE timeout)",
          "a reactor pause that cannot hand a response to the wrong thread"),
    Patch(AssociationSocket, "_create_socket", _around(sending.without_nagle),
          "TCP_NODELAY on requested associations: the last segment of each C-STORE waited about "
          "40 ms for the peer's delayed ACK", "socket options for requested associations (pydicom/pynetdicom#565)"),
    Patch(DIMSEServiceProvider, "send_msg", _by(sending.send_msg),
          "a C-STORE success response and a file's C-STORE request encoded without pydicom data sets, "
          "other messages' PDUs queued together: a quarter of the dispatcher's time per image",
          "send_msg queuing a message's PDUs together and encoding a C-STORE without building a data set"),
    Patch(DIMSEServiceProvider, "receive_primitive", _around(responses.receive_primitive),
          "a C-STORE response to the dispatcher read without decoding a pydicom data set: a fifth "
          "of the dispatcher's time per image",
          "a C-STORE response decoded without a pydicom data set", roles=frozenset({SENDER})),
    Patch(fsm.ACTIONS, "DT-1", _action(sending.send_p_data),
          "a P-DATA-TF encoded without PDU and item objects, a batch in one socket write",
          "a leaner P-DATA-TF encoder in pynetdicom"),
    Patch(fsm.ACTIONS, "AR-7", _action(sending.send_p_data_releasing),
          "as DT-1, while the peer's release waits", "a leaner P-DATA-TF encoder in pynetdicom"),
)

_done: set[str] = set()
_speedups: bool | None = None


def install(role: str, max_pdu: int = 0, p_data: pdu_guard.PDataReader | None = None) -> bool:
    """Install this process's rows for ``role`` (a receiver also sets the guard's ``max_pdu`` and
    P-DATA reader); True when the speed-ups are on, False on stock pynetdicom with the guard only.
    Raises PynetdicomMismatch when the guard itself cannot be installed."""
    speedups = speedups_allowed()
    if role == RECEIVER:
        pdu_guard.configure(max_pdu, p_data if speedups else None)
    for row in TABLE:
        if role in row.roles and (row.mandatory or speedups) and row.target not in _done:
            _apply(row)
            _done.add(row.target)
    return speedups


def speedups_allowed() -> bool:
    """Whether every optional row fits the installed pynetdicom (decided once per process, with
    one warning when not); raises PynetdicomMismatch as ``optional_mismatches`` does."""
    global _speedups
    if _speedups is None:
        optional = optional_mismatches()
        if optional:
            logs.warning("pynetdicom.stock", pynetdicom=internals.version(),
                         differs="; ".join(f"expected {m.expected}, found {m.found}" for m in optional),
                         runs="on stock pynetdicom without radnode's speed-ups (PDU guard kept)")
        _speedups = not optional
    return _speedups


def optional_mismatches() -> list[Mismatch]:
    """What differs for the optional rows; raises PynetdicomMismatch when the guard, or stock
    pynetdicom's chunked receiving that stands in for the speed-ups, does not fit (the receiver
    calls this at import, so that the node does not start)."""
    found = internals.mismatches()
    stock = [m for m in found if internals.STOCK in m.modules]
    optional = [m for m in found if m not in stock]
    if any(internals.GUARD in m.modules for m in found) or (optional and stock):
        raise PynetdicomMismatch(internals.version(), found)
    return optional


def _apply(row: Patch) -> None:
    if isinstance(row.owner, dict):
        row.owner[row.name] = row.replace(row.owner[row.name])
    else:
        setattr(row.owner, row.name, row.replace(getattr(row.owner, row.name)))
