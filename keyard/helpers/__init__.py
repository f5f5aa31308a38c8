"""Helpers kept for compatibility with the original keyard API (``keyard.helpers.config``)."""
