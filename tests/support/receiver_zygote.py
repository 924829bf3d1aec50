"""A process that has imported the receiver and forks a fresh one on request, in milliseconds.

The supervisor spawns a receiver as a new interpreter (about a second of imports); a test that
kills a receiver a hundred times would spend minutes restarting it. This process imports
``node.operate.service`` once and then, for each line ``fork`` on stdin, forks a child that runs the
node's own receiver entry point (``node.operate.service.receiver_main``) on the given config, and
prints the child's pid. It starts no thread before forking, so the child is a clean copy.

    python3 -m tests.support.receiver_zygote CONFIG
"""

from __future__ import annotations

import os
import signal
import sys

from node.operate.service import receiver_main


def main() -> None:
    config = sys.argv[1]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed children are reaped by the kernel
    for line in sys.stdin:
        if line.strip() != "fork":
            continue
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            receiver_main(config)
            os._exit(0)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
