"""Gantry's plugin SDK for Python: what the raw WIT bindings leave awkward.

A policy written in Python is a WebAssembly component built by ``componentize-py`` against
Gantry's contract (``plugins-wit/``). The bindings it generates (the ``wit_world`` package)
are complete but low level: parameters arrive as a list of name/value records, errors are
raised as ``Err(str)``, and each world expects a class of a fixed name. This module gives:

- :class:`Params`: the operator's parameters, with typed getters whose errors name the
  parameter, and a check that refuses unknown names (a typo is an error, not a default);
- :class:`Balancer`, :class:`Affinity`, :class:`HealthCheck`: base classes with the
  contract's defaults (a balancer states no plan; an affinity remembers nothing);
- :func:`export_balancer`, :func:`export_affinity`, :func:`export_health`: the class the
  world expects, made from yours;
- :mod:`host` access with logging by level (:func:`log_info` and friends), and ``print`` and
  tracebacks sent to Gantry's log: a plugin built with ``--stub-wasi`` has no standard
  output, and writing to it would trap.

The types of the contract (``Backend``, ``Request``, ``PickPlan_Rotation``, ``Verdict_*``...)
come from the generated bindings and are re-exported where a world has them. See
docs/plugins.md, "Python".
"""

from __future__ import annotations

import sys
from typing import Callable, Dict, Iterable, List, Optional, Type

from componentize_py_types import Err  # noqa: F401  (re-exported for raising from configure)
from wit_world.imports import host, types
from wit_world.imports.types import Backend, IpAddress_V4, IpAddress_V6, Protocol, Request

__all__ = [
    "Affinity",
    "Backend",
    "Balancer",
    "ConfigError",
    "HealthCheck",
    "Params",
    "Protocol",
    "Request",
    "address_text",
    "export_affinity",
    "export_balancer",
    "export_health",
    "host",
    "log_debug",
    "log_error",
    "log_info",
    "log_warn",
    "request_header",
    "sequence",
]


class ConfigError(ValueError):
    """A parameter the policy cannot work with; its message is shown to the operator at
    ``gantry check`` and at reload, and the previous configuration keeps serving."""


class Params:
    """The operator's parameters (``params:`` in the configuration), by name."""

    def __init__(self, parameters: Iterable[types.Parameter]):
        self._values: Dict[str, str] = {p.name: p.value for p in parameters}

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The value as text, or ``default`` when absent."""
        return self._values.get(name, default)

    def require(self, name: str, what: str) -> str:
        """The value as text; absent is an error that says what the parameter is for."""
        value = self._values.get(name)
        if value is None:
            raise ConfigError(f"parameter `{name}` is required: {what}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """The value as an integer within ``low..=high``; ``default`` when absent."""
        text = self._values.get(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"parameter `{name}`: `{text}` is not an integer") from None
        if not low <= value <= high:
            raise ConfigError(f"parameter `{name}`: {value} is not within {low} to {high}")
        return value

    def reject_unknown(self, known: Iterable[str]) -> None:
        """Refuses a parameter the policy does not know (most likely a typo)."""
        allowed = set(known)
        unknown = sorted(name for name in self._values if name not in allowed)
        if unknown:
            names = ", ".join(f"`{name}`" for name in unknown)
            expected = ", ".join(f"`{name}`" for name in sorted(allowed)) or "none"
            raise ConfigError(f"unknown parameter {names} (known: {expected})")


def address_text(address: types.IpAddress) -> str:
    """An address as text: ``10.0.0.1``, or for IPv6 its eight groups in hexadecimal,
    uncompressed (``fd00:0:0:0:0:0:0:1``)."""
    if isinstance(address, IpAddress_V4):
        return ".".join(str(part) for part in address.value)
    assert isinstance(address, IpAddress_V6)
    return ":".join(f"{group:x}" for group in address.value)


def request_header(name: str) -> Optional[str]:
    """The value of a header of the HTTP request being placed (see ``host.request-header``)."""
    return host.request_header(name)


def sequence() -> int:
    """The next value of the counter shared by every worker for this backend set."""
    return host.sequence()


def log_debug(message: str) -> None:
    host.log(host.Level.DEBUG, message)


def log_info(message: str) -> None:
    host.log(host.Level.INFO, message)


def log_warn(message: str) -> None:
    host.log(host.Level.WARN, message)


def log_error(message: str) -> None:
    host.log(host.Level.ERROR, message)


class _HostLog:
    """A text stream whose lines go to Gantry's log at one level (standard output and error
    are stubs in the sandbox)."""

    def __init__(self, level):
        self._level = level
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            host.log(self._level, line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            host.log(self._level, self._pending)
            self._pending = ""


def _log_to_host() -> None:
    """Sends standard output and error to Gantry's log from now on. Done at the first call
    from Gantry (every policy is configured first), not at import: the module is imported when
    the component is built, where the host is absent and a message (an import error, say)
    must reach the builder's terminal instead."""
    if not isinstance(sys.stdout, _HostLog):
        sys.stdout = _HostLog(host.Level.INFO)
        sys.stderr = _HostLog(host.Level.WARN)


class Balancer:
    """A balancing policy for one port and one backend set. Subclass it: ``__init__`` takes
    :class:`Params` (raise :class:`ConfigError` to refuse them), then ``set_backends``,
    ``plan`` (optional) and ``pick`` are called as the contract says."""

    def set_backends(self, backends: List[Backend]) -> None:
        raise NotImplementedError

    def pick(self, request: Request, attempt: int) -> Optional[int]:
        raise NotImplementedError

    def plan(self):
        """How the host may place first picks itself (a ``PickPlan_*``), or None (the
        default): ``pick`` is then called for every request."""
        return None


class Affinity:
    """A session-affinity policy for one port. ``idle_timeout_seconds`` (class or instance
    attribute) is how long the host remembers a key; 0, the default, keeps no table."""

    idle_timeout_seconds = 0

    def set_backends(self, backends: List[Backend]) -> None:
        pass

    def stick(self, request: Request):
        raise NotImplementedError

    def assigned(self, request: Request, backend: int):
        return None


class HealthCheck:
    """A health policy for one port. ``settings()`` says what the host probes and whether
    it reports live traffic; ``probed`` and ``observed`` answer verdicts."""

    def settings(self):
        raise NotImplementedError

    def set_backends(self, backends: List[Backend]) -> None:
        pass

    def probed(self, backend: int, outcome):
        from wit_world.exports.health_checks import Verdict_Unchanged

        return Verdict_Unchanged()

    def observed(self, backend: int, outcome):
        from wit_world.exports.health_checks import Verdict_Unchanged

        return Verdict_Unchanged()


def _configured(policy: Callable[[Params], object], parameters: List[types.Parameter]):
    """Builds the policy; a refusal or a bug in the constructor becomes the operator's error
    message rather than a trap."""
    _log_to_host()
    try:
        return policy(Params(parameters))
    except ConfigError as refused:
        raise Err(str(refused)) from None
    except Exception as bug:  # noqa: BLE001  (any failure is reported, never a trap)
        raise Err(f"{type(bug).__name__}: {bug}") from None


def export_balancer(policy: Type[Balancer]):
    """The class the ``balancer`` world expects (``Balancers``), serving ``policy``."""

    class Balancers:
        def configure(self, parameters):
            return _configured(policy, parameters)

    return Balancers


def export_affinity(policy: Type[Affinity]):
    """The class the ``affinity`` world expects (``Affinities``), serving ``policy``."""
    from wit_world.exports.affinities import TableSettings

    class Affinities:
        def configure(self, parameters):
            made = _configured(policy, parameters)
            return (made, TableSettings(idle_timeout_seconds=made.idle_timeout_seconds))

    return Affinities


def export_health(policy: Type[HealthCheck]):
    """The class the ``health`` world expects (``HealthChecks``), serving ``policy``."""

    class HealthChecks:
        def configure(self, parameters):
            made = _configured(policy, parameters)
            return (made, made.settings())

    return HealthChecks
