"""Completion: deciding when a series or a study has arrived, since DICOM never says so.

``assembler`` runs the completion loop (association released, quiet time, what the headers
promise, via ``completeness``) and hands complete series and studies to routing; ``studies``
tells an administrator what each study still waits for.
"""
