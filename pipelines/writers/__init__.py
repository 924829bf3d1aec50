"""DICOM writers for pipeline results, one module per IOD (SEG, TID 1500 SR, derived images)."""
