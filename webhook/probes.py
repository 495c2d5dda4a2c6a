"""What is known of a repository's visibility, and why (pure; docs/design.md §2).

The closed sets the probe answers with, shared by the config (overrides), the
core, the probe, the resolver and the metrics: a Reason's value is the
``reason`` label of ``image_proxy_webhook_registry_probes`` and the word in the
design's table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Visibility(enum.StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"
    UNKNOWN = "unknown"
    # The registry itself is on a loopback, link-local or private address, which
    # the probe does not reach (probe.allowPrivateNetworks): the customer's own
    # registry, which the vendor's proxy could not reach either.
    INTERNAL = "internal"


class Reason(enum.StrEnum):
    # what the registry said (webhook/registry.py)
    ANONYMOUS_OK = "anonymous-ok"
    AUTH_REQUIRED = "auth-required"
    NOT_FOUND = "not-found-anonymously"
    RATE_LIMITED = "rate-limited"
    SERVER_ERROR = "server-error"
    BAD_RESPONSE = "bad-response"
    # why it could not be asked
    TIMEOUT = "timeout"
    DNS_ERROR = "dns-error"
    TLS_ERROR = "tls-error"
    CONNECTION_ERROR = "connection-error"
    PROXY_ERROR = "proxy-error"
    BLOCKED_ADDRESS = "blocked-address"
    PLAIN_HTTP_REFUSED = "plain-http-refused"
    INVALID_REFERENCE = "invalid-reference"
    INTERNAL_ERROR = "internal-error"
    # the resolver's own answers (webhook/visibility.py)
    OVERRIDE = "override"
    OVERLOADED = "overloaded"
    DEADLINE = "deadline"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    visibility: Visibility
    reason: Reason
    retry_after: float | None = None  # seconds, from Retry-After on 429 (and 503)
