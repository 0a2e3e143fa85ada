"""Use cases: commands that load, call one domain method and save; queries that replay."""
