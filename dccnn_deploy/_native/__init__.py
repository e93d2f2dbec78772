"""Compiled helpers, loaded through ctypes by :mod:`dccnn_deploy.ops.native` (optional: built by setup.py)."""
