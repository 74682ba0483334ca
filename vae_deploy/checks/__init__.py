"""Checks: graph FLOPs, parity between backends (sized by a plan), verify and its report,
``info``. Above the runtime (they run backends), below serving and the CLI.
"""
