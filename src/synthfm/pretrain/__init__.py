"""synthfm.pretrain: see docs/architecture.md."""
