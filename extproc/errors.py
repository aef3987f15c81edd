"""The error tree.

Everything tokengate raises on purpose derives from `TokengateError`. Lower-level exceptions
(json, yaml, redis, grpc, OS) are translated at the module boundary that sees them
(`raise ... from exc`), so callers only ever handle the classes below. Classes defined
elsewhere name their module; tests/unit/test_error_tree.py checks this drawing against the
classes that exist (every subclass drawn, under its real parent, in its real module).

    TokengateError
    ├── ClientError            an answer the caller sees, rendered in the provider's format
    │   ├── BadRequest           400  malformed JSON, bad field, nesting too deep
    │   │   └── Untranslatable (extproc.providers.translate)   400  a field the serving
    │   │                        backend's API cannot express (model routes)
    │   ├── Unauthenticated      401  no gateway key, unknown key
    │   ├── PermissionDenied     403  model not allowed, namespace without policy
    │   ├── NotFound             404  a route the gateway neither governs nor has been opened
    │   ├── MethodNotAllowed     405  a known route with another method (names the allowed)
    │   ├── PayloadTooLarge      413  body over the configured limit
    │   ├── UnsupportedMediaType 415  a compressed request body (we govern what we can read)
    │   ├── RateLimited          429  a limit refused the request (names it, says when to retry)
    │   ├── InternalFailure      500  a bug in tokengate: generic text, details only in the log
    │   ├── BadGateway           502  an upstream answer the gateway cannot read to count it
    │   └── Unavailable          503  a dependency is down and the policy fails closed
    │       └── BackendsDown     503  every backend of a model route is skipped (breakers
    │                            open); 429 when their providers' limits are reached
    ├── ConfigError            bad settings or a bad policy file: stops start-up, never a request
    │   ├── PolicyError          names the file, the document and the field
    │   └── PriceTableError (extproc.policy.prices)   names the file and the field
    ├── InvariantError         a bug in tokengate (an impossible value reached a function):
    │                            never answered as itself; the server logs it and answers
    │                            InternalFailure, a command fails with its stack
    ├── QuotaStoreError        the quota store could not be reached or answered nonsense
    │   ├── StoreTimeout (extproc.quota.deadline)   no answer within --store-timeout of
    │   │                        running time: the store is slow or gone (opens the breaker)
    │   └── LoopStarved (extproc.quota.deadline)   no answer within the wall cap, this
    │                            process's event loop starved most of it: overload, not
    │                            the store (the call's fail mode applies, the breaker stays)
    ├── SSEError (extproc.providers.sse)   an upstream stream we cannot read (an event over
    │                            1 MiB): the answer still flows, governance of it stops
    ├── KubeApiError (extproc.kube.policysync._kubeapi)   policy-sync: the API server is
    │   │                        unreachable, refused us or answered nonsense; retried
    │   └── ResourceExpired (extproc.kube.policysync._kubeapi)   410 Gone: list again
    ├── CtlError (extproc.ctl.exits)   `tokengate ctl`: one line on stderr and the exit code
    │                            scripts rely on (auth 3, unreachable 4, refused 1)
    └── StackError (extproc.dev.stack)   the local stack (`tokengate dev`, tests, bench) could
                                 not start or run: a port it was given is in use (nothing
                                 started), or a part failed (the message has its log tail)

Client-facing messages never carry stack traces, credentials or internal addresses.
"""

from __future__ import annotations


class TokengateError(Exception):
    """Base of every error tokengate raises on purpose."""


class ClientError(TokengateError):
    """An error the caller must see, rendered in the provider's own error format."""

    status: int = 400
    error_type: str = "invalid_request_error"
    outcome: str = "client_error"  # the `outcome` label of tokengate_requests_total
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        """Extra response headers this error carries (e.g. Retry-After)."""
        return {}


class BadRequest(ClientError):
    outcome = "bad_request"
    status = 400
    error_type = "invalid_request_error"


class Unauthenticated(ClientError):
    outcome = "unauthenticated"
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    outcome = "forbidden"
    status = 403
    error_type = "permission_error"
    code = "model_not_allowed"


class NotFound(ClientError):
    """Default deny: not a governed route, and no `Route` policy opens it for the caller."""

    outcome = "not_found"
    status = 404
    error_type = "invalid_request_error"
    code = "unknown_url"


class MethodNotAllowed(ClientError):
    outcome = "method_not_allowed"
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"allow": ", ".join(self.allowed)}


class PayloadTooLarge(ClientError):
    outcome = "too_large"
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(ClientError):
    outcome = "unsupported_media_type"
    status = 415
    error_type = "invalid_request_error"
    code = "unsupported_content_encoding"


class RateLimited(ClientError):
    """A limit refused the request. `limit` is the policy limit's name, `retry_after` seconds."""

    outcome = "rate_limited"
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, retry_after: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, int(-(-self.retry_after // 1))))}


class InternalFailure(ClientError):
    outcome = "internal_error"
    status = 500
    error_type = "api_error"
    code = "internal_error"


class BadGateway(ClientError):
    """The upstream answered in a form the gateway cannot govern (e.g. an encoding it cannot
    decode); nothing of it reaches the client, the reservation is charged."""

    outcome = "bad_gateway"
    status = 502
    error_type = "api_error"
    code = "upstream_unreadable"


class Unavailable(ClientError):
    """A dependency (quota store, policy) is unavailable and the policy says fail closed."""

    outcome = "unavailable"
    status = 503
    error_type = "api_error"
    code = "gateway_unavailable"


class BackendsDown(Unavailable):
    """Every backend of the request's model route is skipped: breakers open (or probing),
    or its provider's rate limit reached. `retry_after`: when the first may be tried."""

    outcome = "backends_down"
    code = "backends_unavailable"

    def __init__(self, message: str, *, retry_after: float, status: int = 503) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        if status == 429:
            self.error_type = "rate_limit_error"

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, int(-(-self.retry_after // 1))))}


class ConfigError(TokengateError):
    """Settings or configuration files are unusable; raised at start-up or reload."""


class PolicyError(ConfigError):
    """A policy document is invalid. The message names file, document index and field."""

    def __init__(self, *, file: str, document: int | None, field: str | None, problem: str):
        where = file
        if document is not None:
            where += f" (document {document})"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.document = document
        self.field = field
        self.problem = problem


class InvariantError(TokengateError):
    """A value that the code before this point rules out (a negative token count, a file name
    with a path separator): a bug, so it is not caught on purpose anywhere."""


class QuotaStoreError(TokengateError):
    """The quota store failed; the caller's policy decides whether to fail open or closed."""
