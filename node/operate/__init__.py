"""Operating: the running node and the people who look after it.

``service`` is ``radnode serve``'s process tree and supervisor; ``cli`` the ``radnode`` command;
``web`` the administrator's page; ``admin`` what both of them read and do; ``monitoring``
/metrics and /health; ``retention`` and ``reconcile`` keep the spool and the index honest;
``findings`` prints a report's findings at a terminal.
"""
