"""Sending a DIMSE request as given, from a pynetdicom association, and waiting for its answer.

The tests send data sets that pynetdicom's ``send_c_store`` would refuse or fix, so they drive
the association's DIMSE provider themselves, pausing its reactor as ``send_c_store`` does. That
pause has a race (pynetdicom's own too): ``_is_paused`` still says True from the last pause
while the reactor, released a moment ago, has not yet run, so the next request goes out
unpaused and the reactor may take its response off the queue before the caller does; stock
pynetdicom then drops it as an "unexpected C-STORE service message" and the caller waits out
its timeout. ``hand_back_responses`` closes the race for good: a response the reactor takes goes
back on the queue the caller waits on (the dispatcher does the same, in
``node.dicomnet.patches``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association


def hand_back_responses(assoc: Association) -> None:
    """Make ``assoc``'s reactor put any response it takes back for the waiting caller (a test
    SCU never serves a request, so everything the reactor sees is a response)."""

    def requeue(msg: Any, context_id: int) -> None:
        assoc.dimse.msg_queue.put((context_id, msg))

    assoc._serve_request = requeue  # type: ignore[method-assign]


def exchange(assoc: Association, request: Any, context_id: int,
             send: Callable[[], None] | None = None) -> Any:
    """Send ``request`` (or call ``send``, which puts its bytes on the wire itself) and return
    the response primitive, or None when none came within the DIMSE timeout or the peer
    aborted."""
    hand_back_responses(assoc)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused and assoc.is_established:
        time.sleep(0.001)
    try:
        if send is None:
            assoc.dimse.send_msg(request, context_id)
        else:
            send()
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return response
