"""synthfm.analyze: see docs/architecture.md."""
