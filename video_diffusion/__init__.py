"""Masked-conditional video diffusion: one model for video prediction, infilling and generation."""

__version__ = "0.1.0"
