"""Test suite; a package so tests and scripts import the shared tests.support module."""
