"""A sample third-party tickbus strategy package: see :mod:`.flow`."""
