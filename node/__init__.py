"""Everything that moves DICOM data: receive, index, group, route, run, send, operate."""
