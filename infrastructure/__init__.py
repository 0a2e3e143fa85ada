"""Everything that touches the outside world: configuration, databases, logging, wiring."""
