"""Everything that turns images into findings: volumes, models, pipelines, DICOM writers."""
