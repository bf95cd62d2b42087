"""Shared test infrastructure: real services on loopback ports (see services.py)."""
