"""Receiving: DICOM associations in, instances durable on disk and in the index.

The Storage SCP (``scp``) on pynetdicom, with what pynetdicom does not do for a node that must
never lose an acknowledged instance nor fall over on a hostile one: PDU lengths checked before a
body is read (``node.dicomnet.pdu_guard``), C-STORE data sets streamed to the spool as they arrive
(``pdata_stream``, or ``stock_store`` on stock pynetdicom), structure screened before the data
set is trusted (``screening``), association slots shared across receiver processes (``slots``),
the spool folder (``spool``) and its lock (``spool_lock``). The patches of pynetdicom itself are
in ``node.dicomnet``.
"""
