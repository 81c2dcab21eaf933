"""Conditional diffusion generators: pixel, latent and Stable Diffusion UNets trained through the pretraining engine."""
