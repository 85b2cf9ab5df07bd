"""Diffusion Pilot: direct image generators frame by frame."""

__version__ = "0.1.0"
