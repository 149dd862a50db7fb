"""The library's error tree.

Every error a user can cause is a :class:`TansError` with a machine-readable ``code`` and a message
that names the problem and the next step. The CLI catches the base class once and prints it cleanly
(exit status 2 for a :class:`ParamError`, a bad value on the command line; 1 for the rest).
"""
from __future__ import annotations


class TansError(Exception):
    """Base class of every error the product raises on purpose."""

    code = "TANS_ERROR"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class DataError(TansError):
    """A dataset could not be found, read or used."""

    code = "BAD_DATA"


class ConfigError(TansError):
    """A setting, flag or profile is invalid."""

    code = "BAD_CONFIG"


class ParamError(ConfigError):
    """One parameter of a stage's config has a bad value (see :mod:`tans_registry.params`)."""

    code = "BAD_PARAM"


class TrackingError(TansError):
    """The MLflow tracking store could not be reached or used."""

    code = "TRACKING"


class RegistryError(TansError):
    """The MLflow Model Registry refused or failed a call (wrapped at the registry boundary)."""

    code = "REGISTRY"
