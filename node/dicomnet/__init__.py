"""DICOM networking both sides share: radnode's patches of pynetdicom and what they stand on.

The patch table (``patches``) installs the PDU guard (``pdu_guard``), the reactors that wait for
their work (``reactor``) and the leaner sending (``sending``, ``command_sets``), after checking
pynetdicom's internals (``internals``). The receiver and the dispatcher call ``patches.install``;
deliver/ imports nothing of receive/.
"""
