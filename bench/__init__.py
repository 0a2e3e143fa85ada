"""The benchmark suite (not part of the pytest run): `.venv/bin/python -m bench.run [--quick]`."""
