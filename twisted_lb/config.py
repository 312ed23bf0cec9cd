"""
The config file: TOML in, frozen data out, with every problem reported at once.

The schema is declared once, as pydantic v2 models (strict types, ``extra="forbid"``,
``Field`` constraints and descriptions). The same models are the frozen data
that :mod:`twisted_lb.service` builds from, the source of the key reference in
``docs/config.rst`` and of the JSON Schema that ``twisted-lb schema`` prints. They are the only
validator: a :class:`Config` that :func:`config_from_dict` returns is usable as it is.

:func:`load_config` reads a file and :func:`parse_config` reads text; both hand the parsed tables
to :func:`config_from_dict`, which either returns a :class:`Config` or raises one
:class:`ConfigError` listing every :class:`Problem`. Each problem names the file, the key path
(``pools.app.backends[1].weight``), the TOML line where one is known, and what to write instead.

The rules of a domain live in the module that owns it, which applies the same rule, with the
same message, to its library API: :mod:`twisted_lb.strategies` judges strategy names and
options, :mod:`twisted_lb.tls` certificate, key and CA files, versions, ciphers and curves,
:mod:`twisted_lb._address` addresses, host names and listeners, :mod:`twisted_lb.http.routing`
paths, :mod:`twisted_lb.health` an http check's statuses and body, and
:mod:`twisted_lb.admin` the token file. This module words the types, ranges, units, unknown
keys and the rules across keys, and says where each problem is.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, NoReturn, get_args

import attrs
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import PydanticCustomError, PydanticUndefined, core_schema

from twisted_lb import _compat as compat
from twisted_lb import _defaults as defaults
from twisted_lb import tls
from twisted_lb._address import (
    allowed_host_problem,
    endpoint_problem,
    exposed_problem,
    host_problem,
    parse_address,
    proxy_listener,
    server_name_problem,
    tls_listener_problem,
)
from twisted_lb.health import expect_body_problem, parse_expect_status
from twisted_lb.http.routing import path_problem

__all__ = [
    "AdminConfig",
    "BackendConfig",
    "CertificateConfig",
    "Config",
    "ConfigError",
    "FrontendConfig",
    "FrontendTLSConfig",
    "GlobalConfig",
    "HealthCheckConfig",
    "OutlierDetectionConfig",
    "PoolConfig",
    "PoolTLSConfig",
    "Problem",
    "RouteConfig",
    "config_from_dict",
    "json_schema",
    "load_config",
    "parse_config",
]


@attrs.frozen
class Problem:
    """
    One thing wrong with a config file.

    ``str(problem)`` is ``"{path}: {key}: {message}"``, for example
    ``lb.toml: pools.app.backends[1].wieght: unknown key (did you mean 'weight'?)``.

    Attributes:
        path: the file, as given to :func:`load_config` (or ``"<string>"``).
        key: the key path, with array indexes: ``frontends.web.listen[0]``. Table names that
            are not bare TOML keys are quoted: ``pools."my.app"``. ``"(file)"`` for problems
            with the document as a whole, ``"cannot read"`` when the file could not be read,
            and ``"line L, column C"`` for TOML syntax errors.
        message: what is wrong and how to fix it.
        line: the line of the file (from 1) that the key is on, or ``None`` when unknown
            (no text, or a key that is missing). It does not take part in comparisons.
    """

    path: str
    key: str
    message: str
    line: int | None = attrs.field(default=None, eq=False)

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.message}"

    def located(self) -> str:
        """
        The problem as ``twisted-lb check`` prints it: ``str(problem)`` followed by
        `` (line N)`` when the line is known.
        """
        return str(self) if self.line is None else f"{self} (line {self.line})"


class ConfigError(Exception):
    """
    The config file cannot be used. ``str()`` of it is one problem per line.

    Attributes:
        problems: every problem found, in the order of the document; never empty.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


# -- how values are checked --------------------------------------------------------------------
#
# Each message is written here rather than being pydantic's: our validators fail with their own,
# and _problem() words pydantic's strict type checks. A table's "before" hook can refuse one of
# its values in advance by putting a _Refused in its place (a cross-key rule, an unknown key, a
# missing key): whatever check then fails on it, the problem is the refusal, at that key, and the
# table's other keys are still checked.


@attrs.frozen
class _Refused:
    """A value refused before validation, with the message; ``up`` moves the key to a parent."""

    message: str
    up: int = 0


def _fail(message: str, *at: str | int, up: int = 0) -> NoReturn:
    """Fail validation with our message (``at`` extends the key path, ``up`` shortens it)."""
    raise PydanticCustomError("lb", "{message}", {"message": message, "at": at, "up": up})


def _v(check: Callable[..., Any], input_type: Any = PydanticUndefined) -> BeforeValidator:
    """A before-validator: ``check`` sees the value as written (not ``None``)."""
    return BeforeValidator(_skip(check), json_schema_input_type=input_type)


def _after(check: Callable[..., Any]) -> AfterValidator:
    """An after-validator: ``check`` sees a value of the field's type (not ``None``)."""
    return AfterValidator(_skip(check))


def _skip(check: Callable[..., Any]) -> Callable[[Any, ValidationInfo], Any]:
    def validate(value: Any, info: ValidationInfo) -> Any:
        if value is None:  # an optional key built in code; TOML has no null
            return None
        return check(value, info) if check.__code__.co_argcount == 2 else check(value)

    return validate


@attrs.frozen
class _Unit:
    """Annotated metadata: adds ``"unit"`` to a key's JSON Schema, for the docs and editors."""

    unit: str

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "unit": self.unit}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """``text`` with control characters (line breaks included) escaped, as repr() does."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _describe(value: object) -> str:
    """Name a value's TOML type with its article: ``"a string"``, ``"an array"``."""
    if isinstance(value, bool):
        return "a boolean"
    for scalar, name in ((int, "an integer"), (float, "a float"), (str, "a string")):
        if isinstance(value, scalar):
            return name
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    kind = type(value).__name__
    return {"datetime": "a date-time", "date": "a date", "time": "a time"}.get(kind, f"a {kind}")


def _quote_list(words: Iterable[str]) -> str:
    return ", ".join(repr(word) for word in words)


def _suggest(word: str, choices: Sequence[str], plural: str) -> str:
    """``" (did you mean 'x'?)"`` for a close choice, else ``"; {plural} are: ..."``."""
    close = difflib.get_close_matches(word, choices, n=1) or difflib.get_close_matches(
        word.lower(), choices, n=1
    )
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; {plural} are: {_quote_list(choices)}"


_TYPES = {"string_type": "a string", "bool_type": "true or false"}


def _string(value: object) -> str:
    if not isinstance(value, str):
        _fail(f"must be {_TYPES['string_type']}, not {_describe(value)}")
    return value


def _integer_problem(value: object, minimum: int, maximum: int | None = None) -> str | None:
    """Why ``value`` is not an integer >= ``minimum`` (and <= ``maximum``): not a bool or float."""
    if isinstance(value, bool) or not isinstance(value, int):
        found = _describe(value)
    elif value < minimum or (maximum is not None and value > maximum):
        found = repr(value)
    else:
        return None
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    return f"must be an integer {bounds}, not {found}"


def _integer(minimum: int, maximum: int | None = None) -> BeforeValidator:
    """An integer >= ``minimum`` (<= ``maximum``); the JSON Schema's bounds come from here too."""

    def check(value: object) -> int:
        problem = _integer_problem(value, minimum, maximum)
        if problem is not None:
            _fail(problem)
        return value  # type: ignore[return-value]

    return _v(check, Annotated[int, Field(ge=minimum, le=maximum)])


_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_EXAMPLES = 'a number of seconds or a duration such as "30s", "500ms" or "2m"'


def _to_seconds(value: object) -> float | None:
    """A number of seconds, or a duration string (``"30s"``, ``"500ms"``, ``"2m"``, ``"1h"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return float("inf")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is not None:
            return float(match["number"]) * _DURATION_UNITS[match["unit"]]
    return None


def _seconds(zero_means: str | None = None) -> BeforeValidator:
    """A duration as a float: > 0, or >= 0 with ``zero_means`` (such as ``"off"``)."""

    def check(value: object) -> float:
        seconds = _to_seconds(value)
        if seconds is None:
            if isinstance(value, str):
                _fail(f"{value!r} is not a duration; write {_DURATION_EXAMPLES}")
            _fail(f"must be {_DURATION_EXAMPLES}, not {_describe(value)}")
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            _fail(f"must be a finite number of seconds, not {value!r}")
        if zero_means is not None and seconds < 0:
            _fail(f"must be 0 ({zero_means}) or more seconds, not {value!r}")
        if zero_means is None and seconds <= 0:
            _fail(f"must be more than 0 seconds, not {value!r}")
        return seconds

    number = Annotated[float, Field(ge=0) if zero_means else Field(gt=0)]
    return _v(check, number | Annotated[str, Field(pattern=r"^[0-9.]+ *(ms|s|m|h)$")])


_Mode = Literal["tcp", "http"]
_State = Literal["ready", "drain", "maint"]
_LogFormat = Literal["text", "json"]
_VerifyClient = Literal["none", "optional", "required"]


def _choice(literal: Any, noun: str, plural: str) -> BeforeValidator:
    """One of the values of ``literal``, a ``Literal`` type."""
    values = get_args(literal)

    def check(value: object) -> str:
        if _string(value) not in values:
            _fail(f"unknown {noun} {value!r}" + _suggest(_string(value), values, plural))
        return _string(value)

    return _v(check)


def _text(problem: Callable[[str], str | None]) -> AfterValidator:
    """A string that ``problem`` (one of the ``_*_problem`` functions below) finds no fault in."""

    def check(value: str) -> str:
        message = problem(value)
        if message is not None:
            _fail(message)
        return value

    return _after(check)


def _array(
    kind: str, empty: str | None = None, table: bool = False, brackets: bool = False
) -> Callable[[object], Any]:
    """An array, as a tuple (with ``table``: a table); ``empty`` is the message for none."""

    def check(value: object) -> Any:
        if not isinstance(value, Mapping if table else list | tuple):
            hint = "; put the table in brackets" if brackets and isinstance(value, Mapping) else ""
            _fail(f"must be {kind}, not {_describe(value)}{hint}")
        if not value and empty is not None:
            _fail(empty)
        return dict(value) if table else tuple(value)

    return check


def _freeze(value: object) -> object:
    """A TOML value, read-only all the way down: tables become mapping proxies, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(key): _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _read_only(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def join_key(parent: str, key: str) -> str:
    """Extend a key path with a table key, quoting keys that are not bare TOML keys."""
    if not _BARE_KEY.fullmatch(key):
        key = _toml_string(key)
    return f"{parent}.{key}" if parent else key


def _key_path(loc: Sequence[str | int]) -> str:
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else join_key(path, part)
    return path


def _check_listen(table: dict[str, Any], where: str, refuse: Callable[[str, str], Any]) -> None:
    """Refuse each endpoint of ``table["listen"]`` for which ``refuse(endpoint, key)`` says why."""
    listen = table.get("listen")
    if not isinstance(listen, str | list):
        return
    items = [listen] if isinstance(listen, str) else list(listen)
    for index, item in enumerate(items):
        key = where if isinstance(listen, str) else f"{where}[{index}]"
        message = refuse(item, key) if isinstance(item, str) else None
        if message is not None:
            items[index] = _Refused(message)
    table["listen"] = items[0] if isinstance(listen, str) else items


_LISTEN_EXAMPLE = "tcp:8080:interface=127.0.0.1"
_BACKENDS_EXAMPLE = 'backends = [{ address = "127.0.0.1:9001" }]'
_MISSING = "required key is missing; add "
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ONLY_HTTP = 'only for {0} = "http"; remove it or set {0} = "http"'
_ROUTE_EXAMPLE = '{ path_prefix = "/api/", pool = "api" }'
_PROXY_EXAMPLES = "'10.0.0.0/8', '192.0.2.7' or '2001:db8::/32'"
_CERTIFICATE_EXAMPLE = '{ cert = "site.pem", key = "site.key" }'
_CERTIFICATES_EXAMPLE = f"certificates = [{_CERTIFICATE_EXAMPLE}]"
_FILE_EXAMPLES = {
    "cert": '"site.pem"',
    "key": '"site.key"',
    "client_ca": '"client-ca.pem"',
    "ca": '"ca.pem"',
    "client_cert": '"client.pem"',
    "client_key": '"client.key"',
    "token_file": '"admin.token"',
    "state_file": '"/var/lib/twisted-lb/state.json"',
}


def _endpoint(example: str) -> Callable[[str], str]:
    """One server endpoint description, checked by Twisted's parser (:func:`endpoint_problem`)."""

    def endpoint(value: str) -> str:
        problem = endpoint_problem(value)
        if problem is not None:
            _fail(
                f"{value!r} is not a valid server endpoint ({problem}); write one as in {example!r}"
            )
        return value

    return endpoint


def _listen(example: str) -> BeforeValidator:
    """A ``listen`` key: one endpoint description or an array of them (at least one)."""
    many = _array(
        "a string or an array of strings",
        f'must list at least one endpoint, as in listen = ["{example}"]',
    )
    return _v(
        lambda value: (_endpoint(example)(value),) if isinstance(value, str) else many(value),
        str | list[str],
    )


def _network(value: str) -> str:
    """An address or network, as :func:`ipaddress.ip_network` with ``strict=False`` takes it."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        _fail(f"{value!r} is not an IP address or network; write one as in {_PROXY_EXAMPLES}")
    return value


def _address(value: str) -> str:
    try:
        parse_address(value)
    except ValueError as e:
        _fail(str(e))
    return value


def _pool_reference(pool: str, info: ValidationInfo) -> str:
    """The name of a pool of the same file (checked when validating a file)."""
    pools: list[str] | None = (info.context or {}).get("pools")
    if pools is None or pool in pools:
        return pool
    if pools:
        hint = _suggest(pool, pools, "defined pools")
    else:
        hint = f"; define it as [{join_key('pools', pool)}]"
    _fail(f"unknown pool {pool!r}{hint}")


def _file(path: str, info: ValidationInfo) -> str:
    """A non-empty path, made absolute against the directory of the config file."""
    key = info.field_name or "path"
    if not path:
        _fail(f"must not be empty; write a path, as in {key} = {_FILE_EXAMPLES.get(key, '')}")
    if "\0" in path:
        _fail(f"{path!r}: a path cannot contain NUL characters")
    return os.path.abspath(os.path.join((info.context or {}).get("directory", ""), path))


def _ca_file(value: str, info: ValidationInfo) -> str:
    problem = tls.ca_problem(value) if info.context else None
    if problem is not None:
        _fail(problem)
    return value


def _key_file(cert_field: str) -> AfterValidator:
    """A private key, checked with its certificate ``cert_field`` by tls.py."""

    def check(key: str, info: ValidationInfo) -> str:
        cert = info.data.get(cert_field)
        fault = tls.pair_problem(cert, key) if cert is not None and info.context else None
        if fault is not None:
            _fail(fault[1], (info.field_name or "key") if fault[0] == "key" else cert_field, up=1)
        return key

    return _after(check)


def _expect_status(value: object, info: ValidationInfo) -> tuple[int, int]:
    """A status code from 100 to 599 (an integer or a string), or a range ``"LOW-HIGH"``."""
    if isinstance(value, tuple | list) and not info.context:  # (low, high), built in code
        low, high = value
        return (low, high)
    if isinstance(value, bool) or not isinstance(value, int | str):
        _fail(
            'must be a status code or a range, as in expect_status = "200-399" (a range), "200" '
            f"or 200, not {_describe(value)}"
        )
    try:
        return parse_expect_status(value)
    except ValueError as e:
        _fail(str(e))


def _jitter(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        found = _describe(value)
    elif not 0 <= value < 1:
        found = repr(value)
    else:
        return float(value)
    _fail(
        "must be a fraction of the interval, at least 0 and less than 1, "
        f"as in jitter = 0.1, not {found}"
    )


def _installed(info: ValidationInfo) -> list[str]:
    """The installed strategies, looked up once per file (the lookup scans the plugins)."""
    from twisted_lb import strategies

    context = info.context if info.context is not None else {}
    if "installed" not in context:
        context["installed"] = sorted(strategies.installed_strategies())
    installed: list[str] = context["installed"]
    return installed


def _strategy(name: str, info: ValidationInfo) -> str:
    """The name of an installed strategy plugin; the default, round_robin, is built in."""
    if name == defaults.STRATEGY:
        return name
    from twisted_lb.strategies import UnknownStrategyError

    installed = _installed(info)
    if name not in installed:
        _fail(str(UnknownStrategyError(name, installed)))
    return name


def _strategy_options(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(f"must be a table, as in strategy_options = {{}}, not {_describe(value)}")
    return {str(key): _freeze(item) for key, item in value.items()}


def _curve(value: object) -> str:
    """A TLS group (curve) name that OpenSSL knows (:func:`twisted_lb.tls.group_problem`)."""
    if not isinstance(value, str):
        _fail(f"must be a string, as in {_CURVES_EXAMPLE}, not {_describe(value)}")
    problem = tls.group_problem(value)
    if problem is not None:
        _fail(problem)
    return value


_CURVES_EXAMPLE = 'curves = ["X25519", "prime256v1", "secp384r1"]'
_CURVES = (
    f"a non-empty array of TLS group names, as in {_CURVES_EXAMPLE} (Mozilla's intermediate "
    "profile, the default)"
)


def _verify_client(value: object) -> str:
    if isinstance(value, bool):
        fix = _toml_string("required" if value else "none")
        _fail(
            f"must be 'none', 'optional' or 'required', not a boolean; write verify_client = {fix}"
        )
    problem = tls.verify_client_problem(_string(value))
    if problem is not None:
        _fail(problem)
    return _string(value)


def _access_log(value: object, info: ValidationInfo) -> bool | str:
    """``true``, ``false``, ``"stdout"``, or a file path, made absolute like a tls file."""
    if isinstance(value, bool) or value == "stdout":
        return value
    if not isinstance(value, str):
        _fail(f'must be true, false, "stdout" or a file path, not {_describe(value)}')
    if not value or "\0" in value or value.endswith(os.sep):
        _fail(
            f'{value!r} is not a file path; write one, as in access_log = "access.log", '
            'or true, false or "stdout"'
        )
    return os.path.abspath(os.path.join((info.context or {}).get("directory", ""), value))


def _tables(noun: str, example: str) -> Callable[[object], Any]:
    """``frontends`` or ``pools``: a table of tables, at least one."""
    kind, empty = f"a table of {noun}s, as in [{example}]", f"at least one {noun} is required"
    return _array(kind, f"{empty}; add one, as in [{example}]", table=True)


_Seconds = Annotated[float, _seconds(), _Unit("s")]
_Count = Annotated[int, _integer(1)]

#: The largest backend ``weight``, as HAProxy's (its ``weight`` is 0 to 256, 0 being our
#: ``drain``): a weight is a share, and consistent-hash strategies build points in proportion
#: to it (see :class:`~twisted_lb.strategies.SourceHash`). :class:`~twisted_lb.backend.Backend`
#: refuses a larger one too.
MAX_WEIGHT = defaults.MAX_WEIGHT


def weight_problem(value: object) -> str | None:
    """
    Why ``value`` is not a backend weight (an integer from 1 to :data:`MAX_WEIGHT`; booleans
    and floats are not), as ``"must be an integer from 1 to 256, not 0"``, or ``None``. The
    one rule of the config's ``weight``, the admin API's and the runtime changes'.
    """
    return _integer_problem(value, 1, MAX_WEIGHT)


_Weight = Annotated[int, _integer(1, MAX_WEIGHT)]
_Files = Annotated[str, _after(_file), _Unit("path")]


# -- the schema --------------------------------------------------------------------------------


class _Positional(compat.ModelMetaclass):
    """Fields may also be given by position, in the order they are declared, as with attrs."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        kwargs.update(zip(cls.model_fields, args, strict=False))  # type: ignore[attr-defined]
        return super().__call__(**kwargs)


class _Model(BaseModel, metaclass=_Positional):
    """
    A table of the config file. Strict (TOML's types only: no ``"5"`` for 5, no ``1`` for
    ``true``), closed (``extra="forbid"``), frozen, compared by value.

    Subclasses say how their messages read: ``_example`` (what a table looks like),
    ``_required`` (the fix for each missing required key), ``_aliases`` (other balancers'
    names for our keys), ``_hidden`` (fields that are not keys of the file), and their cross-key
    rules in :meth:`_prepare`, which refuses values before they are validated.
    """

    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True
    )
    _example: ClassVar[str | None] = None
    _when_true: ClassVar[str | None] = None
    _required: ClassVar[Mapping[str, str]] = {}
    _aliases: ClassVar[Mapping[str, str]] = {}
    _hidden: ClassVar[tuple[str, ...]] = ()
    _later: ClassVar[tuple[str, ...]] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be set")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be deleted")

    @classmethod
    def keys(cls) -> list[str]:
        """The keys a file may write in this table, in the order they are declared."""
        return [
            field.alias or name
            for name, field in cls.model_fields.items()
            if name not in cls._hidden
        ]

    @model_validator(mode="before")
    @classmethod
    def _table(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            if cls._example is not None:
                _fail(f"must be a table, as in {cls._example}, not {_describe(data)}")
            message = f"must be a table, as in [{{where}}], not {_describe(data)}"
            if data is True:
                message += f"; {cls._when_true or 'write {key} = {} for the defaults'}"
            elif data is False:
                message += "; leave {key} out for none"
            _fail(message)
        data = dict(data)
        if info.context:  # the rules across keys are for files; code may write any defaults
            cls._prepare(data, info)
        keys = cls.keys()
        known = {*cls.model_fields, *keys}
        for key in list(data):
            if key not in known and not isinstance(data[key], _Refused):
                data[key] = _Refused(cls._unknown(str(key), keys))
        for key, fix in cls._required.items():
            if key not in data:
                data[key] = _Refused(_MISSING + fix)
        return data

    @classmethod
    def _unknown(cls, key: str, keys: list[str]) -> str:
        if key in cls._later:
            return "not yet supported in this version; remove it"
        hint = cls._aliases.get(key)
        if hint in keys:
            return f"unknown key (did you mean {hint!r}?)"
        if hint is not None:
            return f"unknown key; {hint}"
        return "unknown key" + _suggest(key, keys, "valid keys")

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        """Refuse the values that break a rule across keys (see :class:`_Refused`)."""


class BackendConfig(_Model):
    """
    One backend of a pool: ``backends = ["10.0.0.1:80", { address = "10.0.0.2:80", weight =
    3 }]``. Its ``name`` is its identity within the pool.
    """

    _example = '"127.0.0.1:9001" or { address = "127.0.0.1:9001" }'
    _required = {"address": 'address = "127.0.0.1:9001"'}
    _aliases = {
        "server": "address",
        "host": "address",
        "port": 'write the port in address, as in address = "10.0.0.1:80"',
        "maxconn": "there is no per-backend connection limit; the frontend's max_connections "
        "caps client connections",
        "disabled": "state",
    }

    address: Annotated[str, _after(_address)] = Field(
        description="``host:port``, ``[v6]:port`` or ``unix:/path``, kept as written. A backend "
        'may also be written as this string alone: ``backends = ["10.0.0.1:80"]``.'
    )
    name: str = Field(
        description="Unique within the pool; by default the pool's name and the backend's "
        "position from 1 (``app1``, ``app2``, ...). Reloads match backends by name."
    )
    weight: _Weight = Field(
        1, description=f"Relative share of new connections, from 1 to {MAX_WEIGHT}."
    )
    backup: bool = Field(
        False, description="Used only when no primary (non-backup) backend of the pool is UP."
    )
    state: Annotated[_State, _choice(_State, "state", "valid states")] = Field(
        "ready",
        description='The administrative state, as HAProxy\'s ``set server state``: ``"ready"`` '
        '(in service), ``"drain"`` (no new connections or requests; established ones finish) '
        'or ``"maint"`` (out of service).',
    )


class HealthCheckConfig(_Model):
    """
    ``[pools.NAME.health_check]``: active checks of each backend (HAProxy ``check``, Envoy
    health checking), with HAProxy's rise/fall semantics. An empty table means tcp checks with
    the defaults. Absent: no active checks, backends start UP.
    """

    _aliases = {"type": "kind", "inter": "interval", "downinter": "down_interval", "uri": "path"}
    _http_keys: ClassVar[tuple[str, ...]] = ("path", "host", "expect_status", "expect_body")

    kind: Annotated[_Mode, _choice(_Mode, "kind", "valid kinds")] = Field(
        "tcp",
        description='``"tcp"``: a check passes when a connection is made; ``"http"``: '
        "when a ``GET`` of ``path`` is answered with a status in ``expect_status`` (and a "
        "body that ``expect_body`` matches).",
    )
    interval: _Seconds = Field(
        defaults.CHECK_INTERVAL, description="Between checks of an UP backend (HAProxy ``inter``)."
    )
    timeout: _Seconds = Field(
        defaults.CHECK_TIMEOUT, description="A check that has not passed by then fails."
    )
    rise: _Count = Field(defaults.CHECK_RISE, description="Passes in a row that turn it UP.")
    fall: _Count = Field(defaults.CHECK_FALL, description="Failures in a row that turn it DOWN.")
    down_interval: Annotated[float | None, _seconds(), _Unit("s")] = Field(
        None,
        description="Between checks of a DOWN backend (HAProxy ``downinter``); "
        "default: ``interval``.",
    )
    jitter: Annotated[float, Field(ge=0, lt=1), _v(_jitter), _Unit("fraction")] = Field(
        defaults.CHECK_JITTER,
        description="Each delay is drawn from ``interval * (1 ± jitter)`` so that checks "
        "spread out (HAProxy ``spread-checks``); 0 <= jitter < 1.",
    )
    path: Annotated[str, _text(lambda path: path_problem(path, query=True))] = Field(
        defaults.CHECK_PATH,
        description="http only: the request target, from ``/``, in printable ASCII; it may "
        "have a query.",
    )
    host: Annotated[str | None, _text(lambda host: host_problem(host, route=False))] = Field(
        None,
        description="http only: the ``Host`` header, a name or IP address with an optional "
        "``:port``; default: the backend's address.",
    )
    expect_status: Annotated[tuple[int, int], _v(_expect_status, int | str)] = Field(
        defaults.CHECK_EXPECT_STATUS,
        description='http only: the passing statuses: ``"200-399"`` (a range), ``"200"`` or '
        "``200``, from 100 to 599. In the data: ``(low, high)``.",
    )
    expect_body: Annotated[str | None, _text(expect_body_problem)] = Field(
        None,
        description="http only: a Python regular expression searched for in the first 64 KiB "
        "of the body; default: any body.",
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        if data.get("kind", "tcp") == "tcp":
            for key in cls._http_keys:
                if key in data:
                    data[key] = _Refused(_ONLY_HTTP.format("kind"))


class OutlierDetectionConfig(_Model):
    """
    ``[pools.NAME.outlier_detection]``: passive ejection of backends that fail real traffic
    (Envoy outlier detection). Absent: none.
    """

    consecutive_failures: _Count = Field(
        defaults.CONSECUTIVE_FAILURES,
        description="Failed connects (and, with ``count_5xx``, 5xx responses) in a row that "
        "eject a backend.",
    )
    base_ejection_time: _Seconds = Field(
        defaults.BASE_EJECTION_TIME,
        description="An ejection lasts this times the number of times the backend has been "
        "ejected.",
    )
    max_ejection_time: _Seconds = Field(
        defaults.MAX_EJECTION_TIME, description="The cap on one ejection; >= the base time."
    )
    max_ejection_percent: Annotated[int, _integer(0, 100), _Unit("%")] = Field(
        defaults.MAX_EJECTION_PERCENT,
        description="The largest share of the pool's backends that may be ejected at once.",
    )
    count_5xx: bool = Field(False, description="HTTP: also count 5xx responses as failures.")
    uneject_on_passing_check: bool = Field(
        True,
        description="A passing active health check of an ejected backend that is UP by its "
        "checks ends the ejection at once (Envoy's "
        "``successful_active_health_check_uneject_host``).",
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        base_written = data.get("base_ejection_time", defaults.BASE_EJECTION_TIME)
        cap_written = data.get("max_ejection_time", defaults.MAX_EJECTION_TIME)
        base, cap = _to_seconds(base_written), _to_seconds(cap_written)
        if base is None or cap is None or not 0 < cap < base:
            return
        if "max_ejection_time" in data:
            message = (
                f"must be >= base_ejection_time ({base_written!r}), not {cap_written!r}; "
                "raise it or lower base_ejection_time"
            )
        else:
            message = (
                f"is {cap!r} by default, below base_ejection_time ({base_written!r}); "
                f"add max_ejection_time = {base_written!r} or more, or lower base_ejection_time"
            )
        data["max_ejection_time"] = _Refused(message)


class PoolTLSConfig(_Model):
    """
    ``[pools.NAME.tls]``: TLS to the pool's backends, verified by default (HAProxy ``server ...
    ssl verify required ca-file ... sni ...``; nginx ``proxy_ssl_verify on``). Relative paths
    are resolved against the directory of the config file. Absent: plain TCP.
    """

    _aliases = {
        "sni": "server_name",
        "verifyhost": "server_name",
        "proxy_ssl_name": "server_name",
        "ca_file": "ca",
        "ca-file": "ca",
        "proxy_ssl_trusted_certificate": "ca",
        "crt": "client_cert",
        "proxy_ssl_verify": "verify",
    }

    server_name: Annotated[str | None, _text(lambda name: server_name_problem(name))] = Field(
        None,
        description="The name backends' certificates are verified against, also sent as SNI: "
        "a DNS name or IP address (IPv6 without brackets); default: each backend's host.",
    )
    ca: Annotated[_Files | None, _after(_ca_file)] = Field(
        None,
        description="A PEM bundle of the CAs backends' certificates must chain to; default: "
        "the system trust store.",
    )
    client_cert: _Files | None = Field(
        None,
        description="A PEM certificate (leaf first, then its chain) presented to the backends, "
        "for mutual TLS; with ``client_key``.",
    )
    client_key: Annotated[_Files | None, _key_file("client_cert")] = Field(
        None, description="The PEM private key of ``client_cert``."
    )
    verify: bool = Field(
        True,
        description="Whether backends' certificates are verified; ``false`` logs a warning.",
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        pairs = [
            ("client_cert", "client_key", "its private key"),
            ("client_key", "client_cert", "the certificate it is the key of"),
        ]
        for key, other, what in pairs:
            if key in data and other not in data:
                data[key] = _Refused(
                    f"needs {other}, {what}; add {other} = {_FILE_EXAMPLES[other]}"
                )


class PoolConfig(_Model):
    """
    A ``[pools.NAME]`` table: a set of backends and the strategy that picks among them. Its
    name is its identity: frontends and routes name it, and reloads match pools by it.

    The HTTP-only keys apply when the pool serves an ``http`` frontend, and a ``tcp``
    frontend ignores them, so one pool can serve both.
    """

    _required = {"backends": _BACKENDS_EXAMPLE}
    _hidden = ("name",)
    _aliases = {
        "balance": "strategy",
        "server": "backends",
        "servers": "backends",
        "upstream": "backends",
        "timeout": "write connect_timeout or response_timeout",
        "maxconn": "there is no per-pool connection limit; the frontend's max_connections caps "
        "client connections",
        "health": "health_check",
        "check": "health_check",
        "proxy_connect_timeout": "connect_timeout",
        "proxy_read_timeout": "response_timeout",
        "proxy_next_upstream_tries": "write retries, the tries after the first: nginx's "
        "proxy_next_upstream_tries N is retries = N - 1",
        "keepalive": "write max_idle_per_backend, the idle connections kept per backend "
        "(nginx's keepalive is one worker's, for all the upstream's servers together)",
        "keepalive_timeout": "upstream_idle_timeout",
    }

    name: SkipJsonSchema[str] = Field(description="The table's name.")
    backends: Annotated[
        tuple[BackendConfig, ...],
        _v(
            _array(
                f"an array of addresses or tables, as in {_BACKENDS_EXAMPLE} or "
                'backends = ["127.0.0.1:9001"]',
                f"must list at least one backend, as in {_BACKENDS_EXAMPLE}",
            ),
            list[str | BackendConfig],
        ),
    ] = Field(description="At least one backend, in file order; names and addresses unique.")
    strategy: Annotated[str, _after(_strategy)] = Field(
        defaults.STRATEGY, description="The name of an installed strategy plugin."
    )
    strategy_options: Annotated[
        Mapping[str, Any], _v(_strategy_options), AfterValidator(_read_only)
    ] = Field(
        default_factory=lambda: MappingProxyType({}),
        description="Handed to the strategy, which checks them; read-only in the data.",
    )
    connect_timeout: _Seconds = Field(
        defaults.CONNECT_TIMEOUT, description="To wait for a backend connection before the next."
    )
    retries: Annotated[int, _integer(0)] = Field(
        defaults.RETRIES, description="Further backends tried when connecting fails."
    )
    response_timeout: _Seconds = Field(
        defaults.RESPONSE_TIMEOUT,
        description="HTTP: from the request being sent to the first byte of the response; "
        "then 504.",
    )
    upstream_idle_timeout: _Seconds = Field(
        defaults.UPSTREAM_IDLE_TIMEOUT,
        description="HTTP: an idle keep-alive backend connection is kept this long for reuse; "
        "below the 5 s after which Node and others close idle connections.",
    )
    max_idle_per_backend: Annotated[int, _integer(0), _Unit("connections")] = Field(
        defaults.MAX_IDLE_PER_BACKEND,
        description="HTTP: idle upstream connections kept per backend; 0 disables reuse.",
    )
    health_check: HealthCheckConfig | None = Field(None, description="Active checks.")
    outlier_detection: OutlierDetectionConfig | None = Field(None, description="Passive ejection.")
    panic: bool = Field(
        False,
        description="When no backend is available, balance over every backend not in "
        "``drain`` or ``maint`` instead of refusing the client (Envoy's panic mode).",
    )
    slow_start: Annotated[float, _seconds("off"), _Unit("s")] = Field(
        defaults.SLOW_START,
        description="A backend back in rotation ramps its weight from 10% to 100% over this "
        "time (HAProxy ``slowstart``); 0 is off.",
    )
    tls: PoolTLSConfig | None = Field(None, description="TLS to the backends.")

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        cls._check_strategy(data, info)
        backends = data.get("backends")
        if not isinstance(backends, list):
            return
        data["backends"] = backends = [
            {"address": item} if isinstance(item, str) else item for item in backends
        ]
        names: dict[object, str] = {}
        addresses: dict[object, str] = {}
        where = join_key("pools", str(data.get("name", "")))
        for index, item in enumerate(backends):
            if not isinstance(item, Mapping):
                continue
            item = backends[index] = dict(item)
            key, default_name = f"{where}.backends[{index}]", f"{data.get('name')}{index + 1}"
            written = "name" in item
            name = item.setdefault("name", default_name)
            used = _first(names, name, key) if isinstance(name, str) and name else None
            if name == "":
                item["name"] = _Refused(f"must not be empty; leave it out to use {default_name!r}")
            elif used is not None:
                item["name"] = _Refused(
                    f"backend name {name!r} is already used by {used}; "
                    "give each backend a unique name",
                    up=0 if written else 1,
                )
            address = item.get("address")
            try:
                parsed: object = parse_address(address) if isinstance(address, str) else None
            except ValueError:
                parsed = None
            used = None if parsed is None else _first(addresses, parsed, key)
            if used is not None:
                item["address"] = _Refused(
                    f"{address!r} is already used by {used}; "
                    "list each backend once and give it a higher weight instead"
                )
        cls._check_server_name(data, backends)

    @classmethod
    def _check_strategy(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        """Let the strategy's factory judge its options (it raises ValueError naming one)."""
        from twisted_lb import strategies

        strategy, options = data.get("strategy", defaults.STRATEGY), data.get("strategy_options")
        if not isinstance(strategy, str) or not isinstance(options, Mapping) or not options:
            return
        try:
            if strategy == defaults.STRATEGY or strategy in _installed(info):
                strategies.get_strategy(strategy, _freeze(options))  # type: ignore[arg-type]
        except ValueError as e:
            data["strategy_options"] = _Refused(f"{e}; fix or remove it")

    @classmethod
    def _check_server_name(cls, data: dict[str, Any], backends: list[Any]) -> None:
        """With verification on and no ``server_name``, a UNIX socket backend has no host."""
        table = data.get("tls")
        if not isinstance(table, Mapping) or "server_name" in table:
            return
        if table.get("verify", True) is False:
            return
        for index, backend in enumerate(backends):
            address = backend.get("address") if isinstance(backend, Mapping) else None
            if isinstance(address, str) and address.startswith("unix:"):
                data["tls"] = {
                    **table,
                    "server_name": _Refused(
                        f"required when a backend is a UNIX socket, as backends[{index}] "
                        f"({address!r}) is: it has no host name to verify its certificate "
                        'against; add server_name = "app.internal", a name that the '
                        "backends' certificates are for"
                    ),
                }
                return


def _first(seen: dict[object, str], value: object, key: str) -> str | None:
    """Where ``value`` was first seen, or ``None`` (and ``key`` is recorded) the first time."""
    first = seen.setdefault(value, key)
    return None if first == key else first


def _require_pool(data: dict[str, Any], info: ValidationInfo) -> None:
    if "pool" not in data:
        pools = (info.context or {}).get("pools") or ["app"]
        data["pool"] = _Refused(_MISSING + f"pool = {_toml_string(pools[0])}")


class RouteConfig(_Model):
    """
    One ``[[frontends.NAME.routes]]`` table: which requests go to which pool. Routes are tried
    in file order, the first that matches wins, and a request that none matches goes to the
    frontend's ``pool``. A route matches when every part it has matches.
    """

    _example = _ROUTE_EXAMPLE

    pool: Annotated[str, _after(_pool_reference)] = Field(
        description="The name of a pool of the same file."
    )
    host: Annotated[
        str | None,
        _text(lambda host: host_problem(host, route=True)),
        _after(lambda host: host.lower()),
    ] = Field(
        None,
        description='An exact name (``"api.example.com"``) or ``"*."`` and a suffix '
        '(``"*.example.com"``: names ending in ``.example.com``), compared without the '
        "port, case-insensitively; IPv6 in brackets. Default: any host.",
    )
    path_prefix: Annotated[str | None, _text(lambda prefix: path_problem(prefix, query=False))] = (
        Field(
            None,
            description="From ``/``; matches paths that start with it, as plain text "
            '(``"/v1"`` also matches ``/v1x``). Default: any path.',
        )
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        _require_pool(data, info)
        if "host" not in data and "path_prefix" not in data:
            data["host"] = _Refused(
                'a route needs host, path_prefix or both, as in path_prefix = "/api/"; '
                "requests that no route matches go to the frontend's pool",
                up=1,
            )


class CertificateConfig(_Model):
    """One entry of ``certificates``: a certificate and its key, checked together by tls.py."""

    _example = _CERTIFICATE_EXAMPLE
    _required = {"cert": 'cert = "site.pem"', "key": 'key = "site.key"'}

    cert: _Files = Field(
        description="A PEM file: the certificate, leaf first, then its chain (nginx "
        "``ssl_certificate``)."
    )
    key: Annotated[_Files, _key_file("cert")] = Field(
        description="A PEM file: the certificate's private key (nginx ``ssl_certificate_key``)."
    )


class FrontendTLSConfig(_Model):
    """
    ``[frontends.NAME.tls]``: TLS termination on every listener of the frontend, in both
    modes. Relative paths are resolved against the directory of the config file, as nginx
    resolves against its prefix. Absent: plain connections.
    """

    _when_true = f"add its certificates, as in tls = {{ {_CERTIFICATES_EXAMPLE} }}"
    _required = {"certificates": _CERTIFICATES_EXAMPLE}
    _aliases = {
        "crt": "certificates",
        "ssl_certificate": "certificates",
        "ssl_protocols": "min_version",
        "ssl-min-ver": "min_version",
        "ssl_ciphers": "ciphers",
        "ssl_ecdh_curve": "curves",
        "groups": "curves",
        "ca_file": "client_ca",
        "ca-file": "client_ca",
        "ssl_client_certificate": "client_ca",
        "verify": "verify_client",
        "ssl_verify_client": "verify_client",
    }

    certificates: Annotated[
        tuple[CertificateConfig, ...],
        _v(
            _array(
                f"an array of tables, as in {_CERTIFICATES_EXAMPLE}",
                f"must list at least one certificate, as in {_CERTIFICATES_EXAMPLE}",
                brackets=True,
            ),
            list[CertificateConfig],
        ),
    ] = Field(
        description="At least one. SNI picks the certificate whose subjectAltName matches the "
        "name the client asks for; the first is the default (HAProxy ``crt``)."
    )
    min_version: Annotated[str, _text(tls.min_version_problem)] = Field(
        defaults.MIN_TLS_VERSION,
        description='The oldest protocol accepted: ``"TLSv1.2"`` or ``"TLSv1.3"`` (nginx '
        "``ssl_protocols``).",
    )
    ciphers: Annotated[str | None, _text(tls.ciphers_problem)] = Field(
        None,
        description="An OpenSSL cipher string for TLS 1.2 (nginx ``ssl_ciphers``); default: "
        "Mozilla's intermediate list. TLS 1.3 suites are not affected.",
    )
    client_ca: Annotated[_Files | None, _after(_ca_file)] = Field(
        None,
        description="A PEM bundle of the CAs client certificates must chain to (nginx "
        "``ssl_client_certificate``).",
    )
    verify_client: Annotated[_VerifyClient, _v(_verify_client)] = Field(
        "none",
        description='``"none"``, ``"optional"`` (asked for, verified when sent) or '
        '``"required"`` (nginx ``ssl_verify_client``); the last two need ``client_ca``.',
    )
    curves: Annotated[
        tuple[Annotated[str, _v(_curve)], ...],
        _v(_array(_CURVES, f"must be {_CURVES}, not an array"), list[str]),
    ] = Field(
        defaults.TLS_CURVES,
        description="The key exchange groups offered, in order of preference (nginx "
        "``ssl_ecdh_curve``); Mozilla intermediate by default.",
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        misplaced = [key for key in ("cert", "key") if key in data]
        if misplaced:
            cert, key = (
                _toml_string(path) if isinstance(path, str) and path else _FILE_EXAMPLES[name]
                for name in ("cert", "key")
                for path in [data.get(name)]
            )
            fix = f"certificates = [{{ cert = {cert}, key = {key} }}]"
            for name in misplaced:
                data[name] = _Refused(f"goes in an entry of certificates; write {fix}")
            if "certificates" not in data:
                data["certificates"] = _Refused("")  # reported as the misplaced keys
        verify = data.get("verify_client")
        if verify in ("optional", "required") and "client_ca" not in data:
            data["verify_client"] = _Refused(
                f"{verify!r} needs client_ca, the CA bundle that client certificates are "
                f"verified against; add client_ca = {_FILE_EXAMPLES['client_ca']}"
            )


_Networks = Annotated[
    tuple[Annotated[str, _after(_network)], ...],
    _v(_array('an array of strings, as in {key} = ["10.0.0.0/8"]'), list[str]),
]


class FrontendConfig(_Model):
    """
    A ``[frontends.NAME]`` table: where to listen and which pool serves the clients. Its name
    is its identity, which reloads match frontends by. The keys marked http only are errors in a
    ``mode = "tcp"`` frontend, which keeps their defaults.
    """

    _required = {
        "mode": 'mode = "http" or mode = "tcp"',
        "listen": f'listen = ["{_LISTEN_EXAMPLE}"]',
    }
    _hidden = ("name",)
    _aliases = {
        "maxconn": "max_connections",
        "bind": "listen",
        "port": "listen",
        "default_backend": "pool",
        "default_pool": "pool",
        "backend": "pool",
        "upstream": "pool",
        "use_backend": "routes",
        "location": "routes",
        "timeout": "write client_timeout, header_timeout or tunnel_timeout",
        "balance": "the strategy goes in the pool: strategy = ... in [pools.NAME]",
        "server": "backends go in a pool: backends = [...] in [pools.NAME]",
        "client_max_body_size": "max_body_bytes",
        "keepalive_timeout": "client_timeout",
        "client_header_timeout": "header_timeout",
        "large_client_header_buffers": "max_header_bytes",
        "set_real_ip_from": "trusted_proxies",
        "ssl": "tls",
    }

    name: SkipJsonSchema[str] = Field(description="The table's name.")
    mode: Annotated[_Mode, _choice(_Mode, "mode", "valid modes")] = Field(
        description='``"tcp"`` (L4 relay) or ``"http"`` (L7 HTTP/1.1 reverse proxy).'
    )
    listen: Annotated[
        tuple[Annotated[str, _after(_endpoint(_LISTEN_EXAMPLE))], ...], _listen(_LISTEN_EXAMPLE)
    ] = Field(
        description='Twisted server endpoint descriptions, such as ``"tcp:8080:interface='
        '127.0.0.1"``: one, or an array of at least one, each used by one frontend only.'
    )
    pool: Annotated[str, _after(_pool_reference)] = Field(
        description="A pool of the same file; for http, the pool of requests no route matches."
    )
    client_timeout: _Seconds = Field(
        defaults.CLIENT_TIMEOUT,
        description="An idle client connection is closed (http: the keep-alive idle time).",
    )
    max_connections: Annotated[int, _integer(1), _Unit("connections")] = Field(
        defaults.MAX_CONNECTIONS,
        description="Concurrent client connections; past it, new ones are refused.",
    )
    header_timeout: _Seconds = Field(
        defaults.HEADER_TIMEOUT,
        description="http only: to receive a whole request head, else 408.",
        json_schema_extra={"mode": "http"},
    )
    max_header_bytes: Annotated[int, _integer(1024), _Unit("bytes")] = Field(
        defaults.MAX_HEADER_BYTES,
        description="http only: the largest request head, >= 1024, else 431.",
        json_schema_extra={"mode": "http"},
    )
    max_body_bytes: Annotated[int, _integer(0), _Unit("bytes")] = Field(
        defaults.MAX_BODY_BYTES,
        description="http only: the largest request body, else 413; 0 means no limit.",
        json_schema_extra={"mode": "http"},
    )
    trusted_proxies: _Networks = Field(
        (),
        description="http only: addresses and networks (``ipaddress.ip_network``, "
        "``strict=False``) whose ``X-Forwarded-For`` and ``Forwarded`` are kept, as written.",
        json_schema_extra={"mode": "http"},
    )
    routes: Annotated[
        tuple[RouteConfig, ...],
        _v(_array("an array of tables, as in [[{where}]]"), list[RouteConfig]),
    ] = Field(
        (),
        description="http only: ``[[frontends.NAME.routes]]``, in file order; the first match "
        "picks the pool.",
        json_schema_extra={"mode": "http"},
    )
    tunnel_timeout: _Seconds = Field(
        defaults.TUNNEL_TIMEOUT,
        description="http only: an upgraded connection (a WebSocket after 101) idle this long "
        "is closed; it replaces client_timeout once the tunnel is open.",
        json_schema_extra={"mode": "http"},
    )
    tls: FrontendTLSConfig | None = Field(None, description="TLS termination.")
    proxy_protocol_from: _Networks = Field(
        (),
        description="The peers (addresses and networks, as ``trusted_proxies``) whose PROXY "
        "protocol header a ``haproxy:`` listener believes; others are refused. Empty: "
        "``trusted_proxies``, or any peer when that is empty too. Only with a ``haproxy:`` "
        "listener.",
    )
    underscores_in_headers: bool = Field(
        False,
        description="http only: forward request header fields whose names contain ``_``; "
        "when false they are dropped, as nginx's ``underscores_in_headers off`` does.",
        json_schema_extra={"mode": "http"},
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        if data.get("mode") == "tcp":
            for key, field in cls.model_fields.items():
                if field.json_schema_extra == {"mode": "http"} and key in data:
                    data[key] = _Refused(_ONLY_HTTP.format("mode"))
        _require_pool(data, info)
        where = join_key("frontends", str(data.get("name", "")))
        listen = data.get("listen")
        _check_listen(data, where, lambda item, _: tls_listener_problem(item, where))
        listen = [listen] if isinstance(listen, str) else listen
        if (
            data.get("proxy_protocol_from")
            and isinstance(listen, list)
            and listen
            and all(isinstance(item, str) and proxy_listener(item) is None for item in listen)
        ):
            data["proxy_protocol_from"] = _Refused(
                "is for a frontend that takes the PROXY protocol, and none of its listeners "
                'does; prefix the listener with haproxy:, as in listen = ["haproxy:'
                f'{listen[0]}"], or remove proxy_protocol_from'
            )
        routes = data.get("routes")
        if isinstance(routes, list):
            data["routes"] = routes = list(routes)
            seen: dict[object, str] = {}
            for index, route in enumerate(routes):
                if isinstance(route, Mapping) and ("host" in route or "path_prefix" in route):
                    host, prefix = route.get("host"), route.get("path_prefix")
                    match = (host.lower() if isinstance(host, str) else repr(host), repr(prefix))
                    used = _first(seen, match, f"{where}.routes[{index}]")
                    if used is not None:
                        routes[index] = _Refused(
                            f"matches the same requests as {used}, which comes first "
                            "and wins; remove one of them"
                        )


class GlobalConfig(_Model):
    """The ``[global]`` table: settings of the whole process."""

    _example = "[global]"
    log_format: Annotated[_LogFormat, _choice(_LogFormat, "log format", "valid formats")] = Field(
        "text",
        description='``"text"``: one line of text per log event; ``"json"``: one JSON object '
        "per line.",
    )
    access_log: Annotated[bool | str, _v(_access_log, bool | str)] = Field(
        True,
        description="Where the access line of each HTTP request and relayed TCP connection "
        'goes: ``true``, the default destination (under twistd, its log); ``"stdout"``; a file '
        "path, relative to the config file; or ``false``, none (nginx ``access_log off``).",
    )
    access_log_buffer: Annotated[int, _integer(0), _Unit("bytes")] = Field(
        defaults.ACCESS_LOG_BUFFER,
        description="Access lines held before they are written (nginx ``access_log ... "
        "buffer=``); 0 writes each line at once.",
    )
    access_log_flush: _Seconds = Field(
        defaults.ACCESS_LOG_FLUSH,
        description="An access line waits in the buffer this long at most (nginx "
        "``access_log ... flush=``).",
    )
    drain_timeout: _Seconds = Field(
        defaults.DRAIN_TIMEOUT,
        description="How long a reload (or a runtime removal) lets the connections and "
        "requests of a removed backend, pool or frontend finish; the rest are then closed, "
        "with a log event.",
    )


_ADMIN_LISTEN_EXAMPLE = "unix:/run/twisted-lb/admin.sock"


def _socket_mode(value: object) -> int:
    """A file mode in octal: ``"0600"``, ``"600"`` or ``0o600``."""
    hint = 'write it in octal as a string, as in socket_mode = "0600"'
    if isinstance(value, str):
        if re.fullmatch(r"0?[0-7]{3}", value):
            return int(value, 8)
        _fail(f"{value!r} is not a file mode from '0000' to '0777'; {hint}")
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 0o777:
            return value
        _fail(
            f"{value} is not a file mode from 0o000 to 0o777 (a decimal 600 is not 0o600); {hint}"
        )
    _fail(f'must be a string, as in socket_mode = "0600", not {_describe(value)}')


def _token_file(path: str) -> str:
    """A bearer token file that :func:`twisted_lb.admin.read_token` reads, as start-up will."""
    from twisted_lb.admin import read_token  # admin.py imports this module

    try:
        read_token(path)
    except OSError as e:
        _fail(f"cannot read {path}: {e.strerror or e}")
    except ValueError as e:
        _fail(str(e))
    return path


class AdminConfig(_Model):
    """
    The ``[admin]`` table: the admin API's listeners (see docs/operations.rst). Without the
    table there is no admin listener.
    """

    _example = f'[admin] listen = ["{_ADMIN_LISTEN_EXAMPLE}"]'
    _required = {"listen": f'listen = ["{_ADMIN_LISTEN_EXAMPLE}"]'}

    listen: Annotated[
        tuple[Annotated[str, _after(_endpoint(_ADMIN_LISTEN_EXAMPLE))], ...],
        _listen(_ADMIN_LISTEN_EXAMPLE),
    ] = Field(
        description="Twisted server endpoint descriptions of the admin API, as a frontend's "
        '``listen``: ``"unix:/run/twisted-lb/admin.sock"``, ``"tcp:9901:interface=127.0.0.1"``.'
        " A TCP listener that other hosts can reach needs ``token_file``."
    )
    socket_mode: Annotated[int, _v(_socket_mode, str | int), _Unit("octal file mode")] = Field(
        defaults.ADMIN_SOCKET_MODE,
        description="The file mode of each ``unix:`` listener's socket, written in octal as a "
        'string (``"0600"``) or a TOML octal integer (``0o600``).',
        json_schema_extra={"default": "0600"},
    )
    token_file: Annotated[str | None, _after(_file), _after(_token_file), _Unit("path")] = Field(
        None,
        description="A file whose first line is the bearer token that mutating calls "
        "(``PATCH``, ``POST``, ``DELETE``) must send; relative to the config file. Reads need "
        "no token.",
    )
    state_file: Annotated[str | None, _after(_file), _Unit("path")] = Field(
        None,
        description="Where runtime changes made through the admin API are kept across "
        "restarts, as HAProxy's ``server-state-file``; relative to the config file.",
    )
    allowed_hosts: Annotated[
        tuple[Annotated[str, _text(allowed_host_problem)], ...],
        _v(_array('an array of strings, as in allowed_hosts = ["lb1.internal"]'), list[str]),
    ] = Field(
        (),
        description="The names a TCP listener may be reached by, besides IP addresses and "
        "``localhost`` (against DNS rebinding): ``lb1.internal``, or ``.internal`` for that "
        "name and every name under it.",
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        if "token_file" in data:
            return
        _check_listen(data, "admin.listen", lambda item, _: exposed_problem(item))


class Config(_Model):
    """
    A whole, valid config file, compared by value.

    ``path`` is the file it came from (as given to :func:`load_config`, or the ``path`` of
    :func:`parse_config`): problems are reported against it, and relative paths in ``tls``
    tables are resolved against its directory. ``frontends`` and ``pools`` are read-only
    mappings in file order, keyed by name; pools that nothing uses are kept too.
    ``global_config`` is the ``[global]`` table.
    """

    _hidden = ("path",)
    _later = ("metrics",)
    _aliases = {
        "upstream": "pools",
        "upstreams": "pools",
        "backend": "pools",
        "backends": "backends go in a pool: backends = [...] in [pools.NAME]",
        "frontend": "frontends",
        "server": "frontends",
        "listen": "frontends",
        "defaults": "global",
    }

    path: SkipJsonSchema[str] = Field(description="The file.")
    frontends: Annotated[
        Mapping[str, FrontendConfig],
        _v(_tables("frontend", "frontends.web")),
        AfterValidator(_read_only),
    ] = Field(description="The frontends, by name: ``[frontends.NAME]``.")
    pools: Annotated[
        Mapping[str, PoolConfig], _v(_tables("pool", "pools.app")), AfterValidator(_read_only)
    ] = Field(description="The pools, by name: ``[pools.NAME]``.")
    global_config: GlobalConfig = Field(
        default_factory=GlobalConfig, alias="global", description="Process-wide settings."
    )
    admin: AdminConfig | None = Field(
        None, description="The admin API: ``[admin]``; without it, no admin listener."
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], info: ValidationInfo) -> None:
        context = info.context
        if not context:  # built in code, not read from a file
            return
        unknown = cls._unknown("path", cls.keys())
        data["path"] = _Refused(unknown) if "path" in data else context["path"]
        for key, model in (("frontends", FrontendConfig), ("pools", PoolConfig)):
            if isinstance(data.setdefault(key, {}), Mapping):  # none: as an empty table
                data[key] = tables = dict(data[key])
                for name, table in tables.items():  # the table's name is its key
                    if isinstance(table, Mapping):
                        written = _Refused(model._unknown("name", model.keys()))
                        tables[name] = {**table, "name": written if "name" in table else name}
        listeners: dict[object, str] = {}

        def claim(endpoint: str, key: str) -> str | None:
            used = _first(listeners, endpoint, key)
            if used is None:
                return None
            return f"{endpoint!r} is already used by {used}; give each listener its own endpoint"

        frontends = data.get("frontends")
        for name, table in frontends.items() if isinstance(frontends, dict) else ():
            if isinstance(table, dict):
                _check_listen(table, join_key(join_key("frontends", name), "listen"), claim)
        if isinstance(data.get("admin"), Mapping):
            data["admin"] = dict(data["admin"])
            _check_listen(data["admin"], "admin.listen", claim)


# -- reading -----------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """
    Read and validate a TOML config file; problems name it as given in ``path``.

    The file is read synchronously: call this before the reactor runs, or in a thread.

    Raises:
        ConfigError: the file cannot be read (``lb.toml: cannot read: ...``), is not valid TOML
            (``lb.toml: line 3, column 5: invalid TOML: ...``), or breaks the rules; in the
            last case every problem in the file is listed.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([Problem(name, "cannot read", e.strerror or str(e))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        message = f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})"
        raise ConfigError([Problem(name, "cannot read", message)]) from None
    return parse_config(text, name)


def parse_config(text: str, path: str = "<string>") -> Config:
    """
    Validate a config given as TOML text; ``path`` names it in problems and is ``Config.path``.

    Raises:
        ConfigError: the text is not valid TOML (one problem, ``line L, column C: invalid
            TOML: ...``), or it breaks the rules (every problem is listed, with its line).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntax_problem(text, path, e)]) from None
    return _validate(data, path, text)


_TOML_POSITION = re.compile(
    r"^(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$",
    re.DOTALL,
)


def _syntax_problem(text: str, path: str, error: tomllib.TOMLDecodeError) -> Problem:
    """Turn a TOML syntax error into a problem keyed by its line and column (from 1)."""
    message = str(error)
    match = _TOML_POSITION.match(message)
    if match is None:
        return Problem(path, "(file)", f"invalid TOML: {message}")
    message = match["message"]
    if match["line"] is not None:
        line, column = int(match["line"]), int(match["column"])
    else:
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    return Problem(path, f"line {line}, column {column}", f"invalid TOML: {message}", line)


def config_from_dict(data: Mapping[str, object], path: str = "<dict>") -> Config:
    """
    Validate an already parsed document (the tables :func:`tomllib.loads` returns), to build a
    config in code: values must have the types TOML would give them. ``path`` names it in
    problems and is ``Config.path``.

    Raises:
        ConfigError: every problem found in ``data``.
    """
    return _validate(data, path, None)


def _validate(data: object, path: str, text: str | None) -> Config:
    if not isinstance(data, Mapping):
        raise ConfigError([Problem(path, "(file)", f"must be a table, not {_describe(data)}")])
    pools = data.get("pools")
    context = {
        "path": path,
        "pools": [str(name) for name in pools] if isinstance(pools, Mapping) else [],
        # Relative paths in tls tables are relative to the config file; a name in angle
        # brackets ("<string>", "<dict>") is no file, and the current directory is used.
        "directory": "" if path.startswith("<") and path.endswith(">") else os.path.dirname(path),
    }
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as e:
        order = _document_order(data)
        lines = _key_lines(text) if text is not None else {}
        problems: list[tuple[int, Problem]] = []
        for error in e.errors():
            key, message = _problem(error)
            if message:
                problems.append((_position(key, order), Problem(path, _key_path(key), message)))
        problems.sort(key=lambda item: item[0])
        raise ConfigError(
            [attrs.evolve(p, line=_line_of(p.key, lines)) for _, p in problems]
        ) from None


def _problem(error: Any) -> tuple[tuple[str | int, ...], str]:
    """One of pydantic's errors as a key path and our message."""
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if isinstance(value, _Refused):  # whichever check failed on it
        message, loc = value.message, loc[: len(loc) - value.up]
    elif error["type"] == "lb":
        message = ctx["message"]
        loc = loc[: len(loc) - ctx["up"]] + tuple(ctx["at"])
    elif error["type"] in _TYPES:  # pydantic's strict type checks, in our words
        message = f"must be {_TYPES[error['type']]}, not {_describe(value)}"
    else:  # a value that our validators let through, such as a too short array built in code
        message = error["msg"]
    where = _key_path(loc)
    last = next((str(part) for part in reversed(loc) if isinstance(part, str)), "")
    return loc, _one_line(message.replace("{where}", where).replace("{key}", last))


def _document_order(data: Mapping[str, object]) -> dict[tuple[str | int, ...], int]:
    """Each key path of the document, numbered in the order of the document."""
    order: dict[tuple[str | int, ...], int] = {}

    def walk(value: object, loc: tuple[str | int, ...]) -> None:
        order[loc] = len(order)
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, (*loc, str(key)))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*loc, index))

    walk(data, ())
    return order


def _position(loc: tuple[str | int, ...], order: Mapping[tuple[str | int, ...], int]) -> int:
    """Where a key is in the document; a missing key sorts with the nearest table it is in."""
    loc = ("global", *loc[1:]) if loc[:1] == ("global_config",) else loc
    while loc not in order:
        loc = loc[:-1]
    return order[loc]


_TOML_KEY = r'(?:[A-Za-z0-9_-]+|"[^"\\]*")'
_TABLE_HEADER = re.compile(
    rf"^\s*\[\[?\s*(?P<name>{_TOML_KEY}(?:\s*\.\s*{_TOML_KEY})*)\s*\]\]?\s*(?:#.*)?$"
)
_KEY_LINE = re.compile(r"^\s*(?P<key>[A-Za-z0-9_-]+|\"[^\"]*\")\s*=")


def _key_lines(text: str) -> dict[str, int]:
    """The line of each ``key = ...`` and table header, by key path without indexes."""
    lines: dict[str, int] = {}
    tables: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.split("\n"), 1):
        header = _TABLE_HEADER.match(line)
        if header is not None:
            parts = [part.strip('"') for part in re.findall(_TOML_KEY, header["name"])]
            for end in range(1, len(parts) + 1):
                lines.setdefault(_key_path(parts[:end]), number)
            table = _key_path(parts)
            if line.lstrip().startswith("[["):  # the next table of an array of tables
                table += f"[{tables.get(table, 0)}]"
                tables[_key_path(parts)] = tables.get(_key_path(parts), 0) + 1
                lines.setdefault(table, number)
            continue
        key = _KEY_LINE.match(line)
        if key is not None:
            lines.setdefault(join_key(table, key["key"].strip('"')), number)
    return lines


def _line_of(key: str, lines: Mapping[str, int]) -> int | None:
    """The line of a key path (or of the nearest table it is in), or ``None``."""
    for candidate in (key, re.sub(r"\[\d+\]", "", key)):
        while candidate:
            if candidate in lines:
                return lines[candidate]
            parent = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", candidate)
            candidate = "" if parent == candidate else parent
    return None


def json_schema() -> dict[str, Any]:
    """
    The JSON Schema of ``lb.toml`` (draft 2020-12), for editors (taplo, Even Better TOML):
    every key with its type, default, description and, as ``"unit"``, its unit.

    Cross-key rules (http-only keys, pool references, unique names) are only in the checks.
    """
    schema = Config.model_json_schema(by_alias=True)
    schema["$defs"]["BackendConfig"]["required"] = ["address"]  # the name has a default
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "twisted-lb config (lb.toml)"
    return schema


def json_schema_text() -> str:
    """:func:`json_schema` as the text of ``twisted_lb/lb.schema.json``."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


# -- what is wrong with a value, for the validators above -----------------------------------------


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string on one line, for key paths and examples."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)
