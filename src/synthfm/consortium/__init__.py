"""synthfm.consortium: see docs/architecture.md."""
