"""Report: a self-contained HTML page a reviewer can read."""
