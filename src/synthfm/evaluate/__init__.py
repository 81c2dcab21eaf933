"""synthfm.evaluate: see docs/architecture.md."""
