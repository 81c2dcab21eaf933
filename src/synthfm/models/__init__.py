"""synthfm.models: see docs/architecture.md."""
