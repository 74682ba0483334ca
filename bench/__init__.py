"""vae-deploy benchmark suite (pytest-benchmark) and the report generator (``report.py``)."""
