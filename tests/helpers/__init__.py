"""Test helpers (not tests): the method stubs, tiny study tables and image files in real formats."""
