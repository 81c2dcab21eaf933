"""Generators behind one interface: phantoms, RaSD randomized synthesis, diffusion."""
