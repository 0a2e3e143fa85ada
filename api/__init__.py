"""Interfaces to the ledger: the command line now, the HTTP API next."""
