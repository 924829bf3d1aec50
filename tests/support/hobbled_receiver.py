"""The node's receiver with one of its steps made late or broken, to test what it does then.

    python3 -m tests.support.hobbled_receiver CONFIG late-acceptance SECONDS
    python3 -m tests.support.hobbled_receiver CONFIG failing-store

late-acceptance: pynetdicom triggers EVT_ACCEPTED (the receiver's ``on_accepted``, which gives
the association its index id) after it has sent the A-ASSOCIATE-AC, so a fast SCU's first
C-STORE can arrive before that handler ran. The race is a window of microseconds; holding the
handler back for SECONDS makes every association's first C-STORE fall into it.

failing-store: storing a checked data set raises an error the receiver does not expect (a
bug, not a full disk or a locked index, which it answers itself).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pynetdicom import evt

from node.operate.service import receiver_main
from node.receive.intake import Intake
from node.receive.scp import Receiver


def hold_back_acceptance(seconds: float) -> None:
    on_accepted = Receiver.on_accepted

    def late(receiver: Receiver, event: evt.Event) -> None:
        time.sleep(seconds)
        on_accepted(receiver, event)

    Receiver.on_accepted = late  # type: ignore[method-assign]


def break_store() -> None:
    def failing(intake: Intake, *args: Any) -> None:
        raise RuntimeError("a bug in storing")

    Intake.store = failing  # type: ignore[method-assign]


def main() -> None:
    config, mode = sys.argv[1], sys.argv[2]
    if mode == "late-acceptance":
        hold_back_acceptance(float(sys.argv[3]))
    elif mode == "failing-store":
        break_store()
    else:
        raise SystemExit(f"unknown mode {mode!r}: late-acceptance or failing-store")
    receiver_main(config)


if __name__ == "__main__":
    main()
