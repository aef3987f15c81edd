from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Caller(_message.Message):
    __slots__ = ("namespace", "key")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class LimitUsage(_message.Message):
    __slots__ = ("name", "scope", "measure", "algorithm", "per", "used", "limit", "remaining", "reset_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PER_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    scope: str
    measure: str
    algorithm: str
    per: str
    used: int
    limit: int
    remaining: int
    reset_seconds: float
    def __init__(self, name: _Optional[str] = ..., scope: _Optional[str] = ..., measure: _Optional[str] = ..., algorithm: _Optional[str] = ..., per: _Optional[str] = ..., used: _Optional[int] = ..., limit: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_seconds: _Optional[float] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("caller",)
    CALLER_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("limits", "policy_version", "store_up")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STORE_UP_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[LimitUsage]
    policy_version: str
    store_up: bool
    def __init__(self, limits: _Optional[_Iterable[_Union[LimitUsage, _Mapping]]] = ..., policy_version: _Optional[str] = ..., store_up: _Optional[bool] = ...) -> None: ...

class TopConsumersRequest(_message.Message):
    __slots__ = ("window", "measure", "count")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    window: str
    measure: str
    count: int
    def __init__(self, window: _Optional[str] = ..., measure: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Consumer(_message.Message):
    __slots__ = ("caller", "amount")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    amount: int
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., amount: _Optional[int] = ...) -> None: ...

class TopConsumersResponse(_message.Message):
    __slots__ = ("consumers", "window", "measure")
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    consumers: _containers.RepeatedCompositeFieldContainer[Consumer]
    window: str
    measure: str
    def __init__(self, consumers: _Optional[_Iterable[_Union[Consumer, _Mapping]]] = ..., window: _Optional[str] = ..., measure: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("version", "loaded_at", "sources", "namespaces", "keys", "last_reload_error", "last_reload_at", "routes", "model_routes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_AT_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROUTES_FIELD_NUMBER: _ClassVar[int]
    version: str
    loaded_at: float
    sources: _containers.RepeatedScalarFieldContainer[str]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    keys: int
    last_reload_error: str
    last_reload_at: float
    routes: _containers.RepeatedCompositeFieldContainer[OpenRoute]
    model_routes: _containers.RepeatedCompositeFieldContainer[ModelRouteInfo]
    def __init__(self, version: _Optional[str] = ..., loaded_at: _Optional[float] = ..., sources: _Optional[_Iterable[str]] = ..., namespaces: _Optional[_Iterable[str]] = ..., keys: _Optional[int] = ..., last_reload_error: _Optional[str] = ..., last_reload_at: _Optional[float] = ..., routes: _Optional[_Iterable[_Union[OpenRoute, _Mapping]]] = ..., model_routes: _Optional[_Iterable[_Union[ModelRouteInfo, _Mapping]]] = ...) -> None: ...

class ModelRouteInfo(_message.Message):
    __slots__ = ("name", "namespace", "model", "backends")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    model: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., model: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ...) -> None: ...

class GetBackendsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendHealth(_message.Message):
    __slots__ = ("backend", "state", "failures", "open_for_seconds", "remaining_requests", "remaining_tokens", "requests_reset_seconds", "tokens_reset_seconds", "retry_after_seconds", "routes")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    OPEN_FOR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    backend: str
    state: str
    failures: int
    open_for_seconds: float
    remaining_requests: int
    remaining_tokens: int
    requests_reset_seconds: float
    tokens_reset_seconds: float
    retry_after_seconds: float
    routes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, backend: _Optional[str] = ..., state: _Optional[str] = ..., failures: _Optional[int] = ..., open_for_seconds: _Optional[float] = ..., remaining_requests: _Optional[int] = ..., remaining_tokens: _Optional[int] = ..., requests_reset_seconds: _Optional[float] = ..., tokens_reset_seconds: _Optional[float] = ..., retry_after_seconds: _Optional[float] = ..., routes: _Optional[_Iterable[str]] = ...) -> None: ...

class GetBackendsResponse(_message.Message):
    __slots__ = ("backends", "store_up")
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    STORE_UP_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[BackendHealth]
    store_up: bool
    def __init__(self, backends: _Optional[_Iterable[_Union[BackendHealth, _Mapping]]] = ..., store_up: _Optional[bool] = ...) -> None: ...

class OpenRoute(_message.Message):
    __slots__ = ("name", "namespace", "methods", "path", "provider", "namespaces", "limits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    path: str
    provider: str
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    limits: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ..., path: _Optional[str] = ..., provider: _Optional[str] = ..., namespaces: _Optional[_Iterable[str]] = ..., limits: _Optional[_Iterable[str]] = ...) -> None: ...

class ValidatePolicyRequest(_message.Message):
    __slots__ = ("file", "content")
    FILE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    file: str
    content: str
    def __init__(self, file: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class PolicyProblem(_message.Message):
    __slots__ = ("file", "document", "field", "problem")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    file: str
    document: int
    field: str
    problem: str
    def __init__(self, file: _Optional[str] = ..., document: _Optional[int] = ..., field: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class ValidatePolicyResponse(_message.Message):
    __slots__ = ("valid", "problems", "documents")
    VALID_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    problems: _containers.RepeatedCompositeFieldContainer[PolicyProblem]
    documents: int
    def __init__(self, valid: _Optional[bool] = ..., problems: _Optional[_Iterable[_Union[PolicyProblem, _Mapping]]] = ..., documents: _Optional[int] = ...) -> None: ...

class SetOverrideRequest(_message.Message):
    __slots__ = ("caller", "kind", "limit", "amount", "ttl_seconds", "reason")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[SetOverrideRequest.Kind]
        BLOCK: _ClassVar[SetOverrideRequest.Kind]
        EXTRA_QUOTA: _ClassVar[SetOverrideRequest.Kind]
    KIND_UNSPECIFIED: SetOverrideRequest.Kind
    BLOCK: SetOverrideRequest.Kind
    EXTRA_QUOTA: SetOverrideRequest.Kind
    CALLER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    kind: SetOverrideRequest.Kind
    limit: str
    amount: int
    ttl_seconds: float
    reason: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., kind: _Optional[_Union[SetOverrideRequest.Kind, str]] = ..., limit: _Optional[str] = ..., amount: _Optional[int] = ..., ttl_seconds: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class SetOverrideResponse(_message.Message):
    __slots__ = ("expires_at",)
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    expires_at: float
    def __init__(self, expires_at: _Optional[float] = ...) -> None: ...

class ResetUsageRequest(_message.Message):
    __slots__ = ("caller", "reason")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    reason: str
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ResetUsageResponse(_message.Message):
    __slots__ = ("limits_reset",)
    LIMITS_RESET_FIELD_NUMBER: _ClassVar[int]
    limits_reset: int
    def __init__(self, limits_reset: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("kinds",)
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("at", "kind", "caller", "limit", "message")
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    at: float
    kind: str
    caller: Caller
    limit: str
    message: str
    def __init__(self, at: _Optional[float] = ..., kind: _Optional[str] = ..., caller: _Optional[_Union[Caller, _Mapping]] = ..., limit: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GetQueueRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassQueue(_message.Message):
    __slots__ = ("priority_class", "depth", "oldest_wait_seconds", "max_wait_seconds")
    PRIORITY_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    OLDEST_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    priority_class: str
    depth: int
    oldest_wait_seconds: float
    max_wait_seconds: float
    def __init__(self, priority_class: _Optional[str] = ..., depth: _Optional[int] = ..., oldest_wait_seconds: _Optional[float] = ..., max_wait_seconds: _Optional[float] = ...) -> None: ...

class CapacityQueue(_message.Message):
    __slots__ = ("name", "provider", "models", "classes", "limits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    models: _containers.RepeatedScalarFieldContainer[str]
    classes: _containers.RepeatedCompositeFieldContainer[ClassQueue]
    limits: _containers.RepeatedCompositeFieldContainer[LimitUsage]
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., classes: _Optional[_Iterable[_Union[ClassQueue, _Mapping]]] = ..., limits: _Optional[_Iterable[_Union[LimitUsage, _Mapping]]] = ...) -> None: ...

class GetQueueResponse(_message.Message):
    __slots__ = ("capacities", "store_up")
    CAPACITIES_FIELD_NUMBER: _ClassVar[int]
    STORE_UP_FIELD_NUMBER: _ClassVar[int]
    capacities: _containers.RepeatedCompositeFieldContainer[CapacityQueue]
    store_up: bool
    def __init__(self, capacities: _Optional[_Iterable[_Union[CapacityQueue, _Mapping]]] = ..., store_up: _Optional[bool] = ...) -> None: ...
