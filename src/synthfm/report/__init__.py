"""synthfm.report: see docs/architecture.md."""
