"""Test support: the tiny random-weight model built locally."""
