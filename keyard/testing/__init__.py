"""Test support that ships with keyard, so that a store from another package can use it.

:mod:`keyard.testing.store_contract` is the suite every store passes (it needs pytest).
"""
