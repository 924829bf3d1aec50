"""Receiving: DICOM associations in, instances durable on disk and in the index.

The Storage SCP (``scp``) on pynetdicom, with what pynetdicom does not do for a node that must
never lose an acknowledged instance nor fall over on a hostile one: PDU lengths checked before a
body is read (``pdu_guard``), C-STORE data sets streamed to the spool as they arrive
(``pdata_stream``), structure screened before the data set is trusted (``screening``),
association slots shared across receiver processes (``slots``), the spool folder (``spool``)
and its lock (``spool_lock``). Every change to pynetdicom's internals lives here
(``pynetdicom_ext``, ``pdu_guard``, ``pdata_stream``), checked against the pinned version.
"""
