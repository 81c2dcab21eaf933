"""synthfm.adapt: see docs/architecture.md."""
