"""The loyalty ledger's domain model: programs, partners, members and their points.

Pure: imports only the standard library and eventsourcing's aggregate classes.
"""
