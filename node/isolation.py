"""One bad item must not stop a loop that serves every other item.

The node's background loops (completion, scheduler, dispatcher, retention, reconcile) each
walk a list of series, studies, jobs, deliveries or files. An exception raised by one of them,
say a header pydicom cannot read, used to abort the whole pass, and the next pass met the same
item first, so nothing behind it moved again. Each loop now runs every item through
``isolated``: the failure is logged with its reason and handed to the loop's own way of setting
the item aside (a recorded problem, a failed delivery), and the loop goes on with the next.
"""

from __future__ import annotations

from collections.abc import Callable

from node import logs


def isolated(loop: str, subject: str, step: Callable[[], object],
             set_aside: Callable[[str], object]) -> bool:
    """Run one item's ``step``; on an exception call ``set_aside(reason)``. True if it succeeded."""
    try:
        step()
        return True
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"[:500]
    logs.error("loop.item_failed", loop=loop, subject=subject, reason=reason)
    try:
        set_aside(reason)
    except Exception as error:  # the index itself failing: the loop's own retry handles it
        logs.error("loop.set_aside_failed", loop=loop, subject=subject,
                   reason=f"{type(error).__name__}: {error}"[:500])
    return False
