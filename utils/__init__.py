"""Shared library code of the BRIDGE toolkit; stage scripts are thin wrappers around it."""
