"""Settings from the YAML config file (docs/design.md §4).

Every key is camelCase as in Kubernetes and checked at start: an unknown key, a
wrong type or a bad value stops the webhook with a message naming the key.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from webhook import images
from webhook.probes import Visibility

_T = TypeVar("_T")

_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")

WEBHOOK_NAMESPACE_ENV = "POD_NAMESPACE"
# Kubernetes' own namespaces: a webhook outage must never stop the cluster's own Pods.
DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key and the problem."""


class Mode(enum.StrEnum):
    ONLINE = "online"
    AIRGAP = "airgap"


class OnProbeFailure(enum.StrEnum):
    PROXY = "proxy"
    DIRECT = "direct"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Override:
    match: str  # glob on the normalised "domain/path"
    visibility: Visibility

    def matches(self, repository: str) -> bool:
        return fnmatch.fnmatchcase(repository, self.match)


@dataclass(frozen=True, slots=True)
class VisibilitySettings:
    overrides: tuple[Override, ...] = ()
    on_probe_failure: OnProbeFailure = OnProbeFailure.PROXY
    ttl_seconds: float = 3600.0
    failure_ttl_seconds: float = 30.0
    cache_size: int = 10000

    def override_for(self, repository: str) -> Visibility | None:
        """The first override whose glob matches the normalised "domain/path"."""
        for override in self.overrides:
            if override.matches(repository):
                return override.visibility
        return None


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    timeout_seconds: float = 2.0
    insecure_registries: frozenset[str] = frozenset()
    allow_private_networks: bool = False
    max_concurrent: int = 32


@dataclass(frozen=True, slots=True)
class AirgapSettings:
    registry: str = ""
    namespace: str = ""
    username: str = ""
    password_file: str = ""


# The API server refuses request bodies over 3 MiB, so an object written to it is at
# most 3 MiB of JSON (etcd then keeps it as protobuf, 1.5 MiB at most by default). A
# review carries the object and, on UPDATE, its old version: 2 x 3 MiB, plus under
# 1 MiB of envelope (user info, options, names).
DEFAULT_MAX_REQUEST_BYTES = 7 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 8443
    health_port: int = 8080
    cert_file: str = ""
    key_file: str = ""
    admission_deadline_seconds: float = 8.0
    shutdown_timeout_seconds: float = 15.0
    # Bounds on what one client can make the server hold (docs/design.md §7).
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_images_per_object: int = 1000
    max_json_values: int = 250_000
    max_admissions_in_flight: int = 256
    max_body_bytes_in_flight: int = 8 * 1024 * 1024
    max_connections: int = 512
    tls_handshake_timeout_seconds: float = 5.0
    header_timeout_seconds: float = 5.0
    idle_timeout_seconds: float = 120.0


@dataclass(frozen=True, slots=True)
class SelfManagedTLSSettings:
    """The webhook keeps its own CA and serving certificate (chart tls.mode selfManaged).

    They live in the Secret ``secret_name`` of the webhook's namespace; the CA goes into
    the caBundle of the named webhook configurations ("" for one the chart does not
    render). The serving certificate is written to server.certFile/keyFile.
    """

    secret_name: str
    dns_names: tuple[str, ...]
    mutating_webhook_configuration: str = ""
    validating_webhook_configuration: str = ""
    ca_validity_days: float = 3650.0
    cert_validity_days: float = 365.0
    check_interval_seconds: float = 60.0


# The vendor's hosts: the pull-through proxy, and the registry its images come from
# (which a custom registryDomain fronts).
DEFAULT_PROXY_DOMAIN = "proxy.replicated.com"
UPSTREAM_REGISTRY_DOMAIN = "registry.replicated.com"


@dataclass(frozen=True, slots=True)
class Settings:
    app_slug: str
    license_id: str = ""
    license_id_file: str = ""
    proxy_domain: str = DEFAULT_PROXY_DOMAIN
    registry_domain: str = UPSTREAM_REGISTRY_DOMAIN
    pull_secret_name: str = ""
    namespaces: tuple[str, ...] = ()
    exclude_namespaces: frozenset[str] = frozenset(DEFAULT_EXCLUDED_NAMESPACES)
    mode: Mode = Mode.ONLINE
    airgap: AirgapSettings = field(default_factory=AirgapSettings)
    visibility: VisibilitySettings = field(default_factory=VisibilitySettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    mutate_workloads: bool = False
    server: ServerSettings = field(default_factory=ServerSettings)
    self_managed_tls: SelfManagedTLSSettings | None = None

    @property
    def secret_name(self) -> str:
        return self.pull_secret_name or f"{self.app_slug}-registry"

    @property
    def all_namespaces(self) -> bool:
        return "*" in self.namespaces

    def covers(self, namespace: str, webhook_namespace: str = "") -> bool:
        """Whether Pods in this namespace are mutated at all: never the webhook's own
        namespace nor an excluded one, even under ``namespaces: ["*"]``."""
        if namespace in self.exclude_namespaces or (
            webhook_namespace and namespace == webhook_namespace
        ):
            return False
        return self.all_namespaces or namespace in self.namespaces


# --- parsing ---------------------------------------------------------------


class _Section:
    """Reads one mapping of the config, tracking which keys were used."""

    def __init__(self, data: object, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {_kind(data)}")
        self.data: Mapping[str, Any] = data
        self.where = where
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type[_T], default: _T, *, secret: bool = False) -> _T:
        """The value of a key; ``secret``: never repeat the value in an error."""
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            shown = "value hidden" if secret else repr(value)
            raise ConfigError(
                f"{self.key(name)}: expected {kind.__name__}, got {_kind(value)} ({shown})"
            )
        return value

    def choice(self, name: str, kind: Callable[[str], _T], default: _T, choices: str) -> _T:
        raw = self.get(name, str, "")
        if raw == "":
            return default
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{self.key(name)}: {raw!r} is not one of {choices}") from None

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        values = self.get(name, list, list(default))
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise ConfigError(f"{self.key(name)}[{index}]: expected str, got {_kind(value)}")
        return tuple(values)

    def section(self, name: str) -> _Section:
        self.used.add(name)
        return _Section(self.data.get(name), self.key(name))

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise ConfigError(
                f"{self.where or 'config'}: unknown key {unknown[0]!r} (known keys: {known})"
            )


def _kind(value: object) -> str:
    return {
        dict: "mapping",
        list: "list",
        str: "str",
        bool: "bool",
        int: "int",
        float: "float",
    }.get(type(value), type(value).__name__)


def _positive(section: _Section, name: str, default: float) -> float:
    value = section.get(name, float, default)
    if value <= 0:
        raise ConfigError(f"{section.key(name)}: must be greater than 0, got {value}")
    return value


def _count(section: _Section, name: str, default: int) -> int:
    value = section.get(name, int, default)
    if value < 1:
        raise ConfigError(f"{section.key(name)}: must be at least 1, got {value}")
    return value


def _port(section: _Section, name: str, default: int) -> int:
    value = section.get(name, int, default)
    if not 1 <= value <= 65535:
        raise ConfigError(f"{section.key(name)}: {value} is not a TCP port (1-65535)")
    return value


def _host(section: _Section, name: str, default: str, *, required: bool = False) -> str:
    value = section.get(name, str, default)
    if not value and not required:
        return value
    # The host must read as one at the start of an image reference (docs/design.md §1):
    # a bare "registry" would be taken for a Docker Hub path.
    if _reads_as(f"{value}/a/b", "a/b") is None:
        raise ConfigError(
            f"{section.key(name)}: {value!r} is not a registry host (name[:port], with a '.' "
            "or a port, or localhost)"
        )
    return value


def _reads_as(image: str, path: str) -> images.ImageRef | None:
    """The reference when ``image`` parses with this repository path, else None."""
    try:
        ref = images.parse(image)
    except images.InvalidImageError:
        return None
    return ref if ref.path == path else None


def _overrides(section: _Section) -> tuple[Override, ...]:
    section.used.add("overrides")
    raw = section.data.get("overrides") or []
    if not isinstance(raw, list):
        raise ConfigError(f"{section.key('overrides')}: expected list, got {_kind(raw)}")
    result = []
    for index, item in enumerate(raw):
        entry = _Section(item, f"{section.key('overrides')}[{index}]")
        match = entry.get("match", str, "")
        if not match:
            raise ConfigError(f"{entry.key('match')}: required")
        visibility = entry.choice("visibility", Visibility, Visibility.UNKNOWN, "public, private")
        if visibility not in (Visibility.PUBLIC, Visibility.PRIVATE):
            raise ConfigError(f"{entry.key('visibility')}: required, one of public, private")
        entry.done()
        result.append(Override(match, visibility))
    return tuple(result)


def _self_managed_tls(section: _Section, server: ServerSettings) -> SelfManagedTLSSettings | None:
    """The ``selfManagedTLS`` section; absent or empty: certificates come from files."""
    if not section.data:
        return None
    default = SelfManagedTLSSettings(secret_name="", dns_names=())
    names = {}
    for key in ("secretName", "mutatingWebhookConfiguration", "validatingWebhookConfiguration"):
        names[key] = section.get(key, str, "")
    settings = SelfManagedTLSSettings(
        secret_name=names["secretName"],
        dns_names=section.strings("dnsNames"),
        mutating_webhook_configuration=names["mutatingWebhookConfiguration"],
        validating_webhook_configuration=names["validatingWebhookConfiguration"],
        ca_validity_days=_positive(section, "caValidityDays", default.ca_validity_days),
        cert_validity_days=_positive(section, "certValidityDays", default.cert_validity_days),
        check_interval_seconds=_positive(
            section, "checkIntervalSeconds", default.check_interval_seconds
        ),
    )
    section.done()  # a typo is named before what it leaves missing
    if not _DNS_SUBDOMAIN.fullmatch(settings.secret_name):
        raise ConfigError(f"{section.key('secretName')}: required, a Secret name")
    for key, name in names.items():
        if name and not _DNS_SUBDOMAIN.fullmatch(name):
            raise ConfigError(f"{section.key(key)}: {name!r} is not an object name")
    if not settings.dns_names:
        raise ConfigError(f"{section.key('dnsNames')}: required, the names the API server calls")
    if settings.cert_validity_days > settings.ca_validity_days:
        raise ConfigError(
            f"{section.key('certValidityDays')}: must not exceed caValidityDays "
            f"({settings.ca_validity_days:g})"
        )
    if not (server.cert_file and server.key_file):
        raise ConfigError(
            "server.certFile and server.keyFile: required with selfManagedTLS "
            "(the webhook writes its serving certificate there)"
        )
    return settings


def _excluded_namespaces(root: _Section, namespaces: tuple[str, ...]) -> frozenset[str]:
    """excludeNamespaces: never covered, even by namespaces ["*"]; [] excludes none."""
    excluded = root.strings("excludeNamespaces", DEFAULT_EXCLUDED_NAMESPACES)
    for index, namespace in enumerate(excluded):
        if not _DNS_LABEL.fullmatch(namespace):
            raise ConfigError(f"excludeNamespaces[{index}]: {namespace!r} is not a namespace name")
    for index, namespace in enumerate(namespaces):
        if namespace in excluded:
            raise ConfigError(
                f"namespaces[{index}]: {namespace!r} is also in excludeNamespaces; "
                "list it in one of them"
            )
    return frozenset(excluded)


def _app_slug(root: _Section) -> str:
    slug = root.get("appSlug", str, "")
    if not slug:
        raise ConfigError("appSlug: required (the application slug, e.g. my-app)")
    if not _DNS_LABEL.fullmatch(slug):
        raise ConfigError(f"appSlug: {slug!r} must be a lower-case DNS label")
    return slug


def _license(root: _Section, default: Settings) -> tuple[str, str]:
    """licenseID and licenseIDFile: at most one of them."""
    license_id = root.get("licenseID", str, default.license_id, secret=True)
    license_id_file = root.get("licenseIDFile", str, default.license_id_file)
    if license_id and license_id_file:
        raise ConfigError("licenseID and licenseIDFile: set one, not both")
    return license_id, license_id_file


def _pull_secret_name(root: _Section, slug: str, default: Settings) -> str:
    name = root.get("pullSecretName", str, default.pull_secret_name)
    if name and not _DNS_SUBDOMAIN.fullmatch(name):
        raise ConfigError(f"pullSecretName: {name!r} is not a valid Secret name")
    if len(f"{slug}-registry") > 253 and not name:
        raise ConfigError("pullSecretName: the default '<appSlug>-registry' is too long")
    return name


def _namespaces(root: _Section, slug: str) -> tuple[str, ...]:
    """namespaces: the app's own namespace when none are listed."""
    namespaces = root.strings("namespaces") or (slug,)
    for index, namespace in enumerate(namespaces):
        if namespace != "*" and not _DNS_LABEL.fullmatch(namespace):
            raise ConfigError(f"namespaces[{index}]: {namespace!r} is not a namespace name")
    return namespaces


def _airgap(section: _Section) -> AirgapSettings:
    default = AirgapSettings()
    airgap = AirgapSettings(
        registry=_host(section, "registry", default.registry),
        namespace=section.get("namespace", str, default.namespace),
        username=section.get("username", str, default.username),
        password_file=section.get("passwordFile", str, default.password_file),
    )
    namespace = airgap.namespace
    if namespace and _reads_as(f"localhost/{namespace}/a", f"{namespace}/a") is None:
        raise ConfigError(f"airgap.namespace: {namespace!r} is not a lower-case repository path")
    section.done()
    return airgap


def _visibility(section: _Section) -> VisibilitySettings:
    default = VisibilitySettings()
    visibility = VisibilitySettings(
        overrides=_overrides(section),
        on_probe_failure=section.choice(
            "onProbeFailure", OnProbeFailure, default.on_probe_failure, "proxy, direct, deny"
        ),
        ttl_seconds=_positive(section, "ttlSeconds", default.ttl_seconds),
        failure_ttl_seconds=_positive(section, "failureTtlSeconds", default.failure_ttl_seconds),
        cache_size=int(_positive(section, "cacheSize", default.cache_size)),
    )
    section.done()
    return visibility


def _probe(section: _Section) -> ProbeSettings:
    default = ProbeSettings()
    insecure = section.strings("insecureRegistries", tuple(default.insecure_registries))
    probe = ProbeSettings(
        timeout_seconds=_positive(section, "timeoutSeconds", default.timeout_seconds),
        insecure_registries=frozenset(h.lower() for h in insecure),
        allow_private_networks=section.get(
            "allowPrivateNetworks", bool, default.allow_private_networks
        ),
        max_concurrent=int(_positive(section, "maxConcurrent", default.max_concurrent)),
    )
    section.done()
    return probe


def _server(section: _Section) -> ServerSettings:
    d = ServerSettings()
    server = ServerSettings(
        host=section.get("host", str, d.host),
        port=_port(section, "port", d.port),
        health_port=_port(section, "healthPort", d.health_port),
        cert_file=section.get("certFile", str, d.cert_file),
        key_file=section.get("keyFile", str, d.key_file),
        admission_deadline_seconds=_positive(
            section, "admissionDeadlineSeconds", d.admission_deadline_seconds
        ),
        shutdown_timeout_seconds=_positive(
            section, "shutdownTimeoutSeconds", d.shutdown_timeout_seconds
        ),
        max_request_bytes=_count(section, "maxRequestBytes", d.max_request_bytes),
        max_images_per_object=_count(section, "maxImagesPerObject", d.max_images_per_object),
        max_json_values=_count(section, "maxJsonValues", d.max_json_values),
        max_admissions_in_flight=_count(
            section, "maxAdmissionsInFlight", d.max_admissions_in_flight
        ),
        max_body_bytes_in_flight=_count(
            section, "maxBodyBytesInFlight", d.max_body_bytes_in_flight
        ),
        max_connections=_count(section, "maxConnections", d.max_connections),
        tls_handshake_timeout_seconds=_positive(
            section, "tlsHandshakeTimeoutSeconds", d.tls_handshake_timeout_seconds
        ),
        header_timeout_seconds=_positive(section, "headerTimeoutSeconds", d.header_timeout_seconds),
        idle_timeout_seconds=_positive(section, "idleTimeoutSeconds", d.idle_timeout_seconds),
    )
    section.done()
    if server.max_body_bytes_in_flight < server.max_request_bytes:
        raise ConfigError(
            "server.maxBodyBytesInFlight: must be at least server.maxRequestBytes "
            f"({server.max_request_bytes}), got {server.max_body_bytes_in_flight}"
        )
    if bool(server.cert_file) != bool(server.key_file):
        raise ConfigError("server.certFile and server.keyFile: set both or neither")
    if server.port == server.health_port:
        raise ConfigError("server.healthPort: must differ from server.port")
    if server.admission_deadline_seconds > 29:
        raise ConfigError(
            "server.admissionDeadlineSeconds: must stay below the webhook timeoutSeconds "
            f"(at most 30), got {server.admission_deadline_seconds}"
        )
    return server


def parse(data: object) -> Settings:
    """Build Settings from the parsed YAML document; raise ConfigError on any bad value.

    Each section is read by its own function, which takes what a missing key means
    from the dataclass's defaults.
    """
    root = _Section(data, "")
    default = Settings(app_slug="")
    slug = _app_slug(root)
    license_id, license_id_file = _license(root, default)
    pull_secret_name = _pull_secret_name(root, slug, default)
    namespaces = _namespaces(root, slug)
    excluded = _excluded_namespaces(root, namespaces)
    mode = root.choice("mode", Mode, default.mode, "online, airgap")
    airgap = _airgap(root.section("airgap"))
    if mode is Mode.AIRGAP and not airgap.registry:
        raise ConfigError("airgap.registry: required when mode is airgap")
    if mode is Mode.ONLINE and not (license_id or license_id_file):
        raise ConfigError("licenseID or licenseIDFile: required when mode is online")
    visibility = _visibility(root.section("visibility"))
    probe = _probe(root.section("probe"))
    server = _server(root.section("server"))
    self_managed_tls = _self_managed_tls(root.section("selfManagedTLS"), server)
    settings = Settings(
        app_slug=slug,
        license_id=license_id,
        license_id_file=license_id_file,
        proxy_domain=_host(root, "proxyDomain", default.proxy_domain, required=True).lower(),
        registry_domain=_host(
            root, "registryDomain", default.registry_domain, required=True
        ).lower(),
        pull_secret_name=pull_secret_name,
        namespaces=namespaces,
        exclude_namespaces=excluded,
        mode=mode,
        airgap=airgap,
        visibility=visibility,
        probe=probe,
        mutate_workloads=root.get("mutateWorkloads", bool, default.mutate_workloads),
        server=server,
        self_managed_tls=self_managed_tls,
    )
    root.done()
    return settings


def load(path: str | Path) -> Settings:
    """Read and validate the config file; ConfigError names the file on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        # Where, not what: the bytes around it may be the license ID.
        raise ConfigError(
            f"{path}: not UTF-8 text (an undecodable byte at offset {exc.start})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's snippet of the line: it may hold the license ID."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__

    def at(mark: yaml.Mark | None) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    text = ": ".join(part for part in (at(exc.problem_mark), exc.problem or "syntax error") if part)
    if exc.context:
        text += f" ({exc.context}" + (f" at {at(exc.context_mark)})" if exc.context_mark else ")")
    return text
