"""Inference backends. This package never imports ``agent``."""
