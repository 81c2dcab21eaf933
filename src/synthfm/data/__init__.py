"""Datasets: cards, manifests, readers (folder, npz, shards), preprocessing, splits."""
