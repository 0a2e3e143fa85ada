"""Read models built from the event log (balances, card index, audit trail, liability).

Not built yet: the projections arrive with the read-side issue; until then queries replay aggregates.
"""
