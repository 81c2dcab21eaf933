"""synthfm.quality: see docs/architecture.md."""
