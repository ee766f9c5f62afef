"""Dataset audit: per-file properties, duplicates, leakage between splits and a shortcut probe (``cxrkit audit``)."""
