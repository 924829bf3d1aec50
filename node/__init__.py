"""The node: everything that moves DICOM data, one package per stage in data-flow order
(receive, index, complete, route, run, deliver, operate; ARCHITECTURE.md), with the modules
every stage shares at this level (config, logs, tls, passwords, isolation)."""
