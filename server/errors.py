"""The two ways a model can refuse: it cannot load, or a request's input is unusable."""

from __future__ import annotations


class LoadError(Exception):
    """The model cannot be loaded; the message says why (shown by /ready and the smoke)."""


class InputError(ValueError):
    """A request's input cannot be used (an unreadable file, no face in the image...): a 422
    with this message, raised before or while the model runs."""
