"""Errors raised at the backend boundary; vendor exceptions are translated into these."""

from __future__ import annotations


class AcceleratorError(Exception):
    """Base for backend errors."""


class BackendUnavailable(AcceleratorError):
    """The backend cannot be used on this device (missing SDK, no device node, ...)."""


class ModelLoadError(AcceleratorError):
    """The backend could not load the model file."""


class InferenceError(AcceleratorError):
    """A loaded model failed while running, or was given inputs it cannot take."""


class InputError(InferenceError):
    """The inputs given do not fit the model (a missing tensor, a wrong shape or dtype): the caller's
    mistake, never the accelerator's."""
