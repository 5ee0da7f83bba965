"""Test doubles at the boundaries the fast tests replace (see each module)."""
