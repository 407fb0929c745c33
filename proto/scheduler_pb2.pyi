from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Policy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PACK: _ClassVar[Policy]
    SPREAD: _ClassVar[Policy]
PACK: Policy
SPREAD: Policy

class GpuInfo(_message.Message):
    __slots__ = ("index", "uuid", "name", "memory")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    memory: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., memory: _Optional[int] = ...) -> None: ...

class NodeRegistration(_message.Message):
    __slots__ = ("name", "address", "gpus", "oversubscription", "backend", "proof")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    OVERSUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    oversubscription: float
    backend: str
    proof: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., oversubscription: _Optional[float] = ..., backend: _Optional[str] = ..., proof: _Optional[str] = ...) -> None: ...

class NodeAccepted(_message.Message):
    __slots__ = ("heartbeat_s",)
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    heartbeat_s: float
    def __init__(self, heartbeat_s: _Optional[float] = ...) -> None: ...

class GpuFigures(_message.Message):
    __slots__ = ("index", "memory_used", "utilization", "sessions")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    index: int
    memory_used: int
    utilization: int
    sessions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., memory_used: _Optional[int] = ..., utilization: _Optional[int] = ..., sessions: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeHeartbeat(_message.Message):
    __slots__ = ("name", "gpus", "proof", "wait_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuFigures]
    proof: str
    wait_s: float
    def __init__(self, name: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuFigures, _Mapping]]] = ..., proof: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class AllocationCheck(_message.Message):
    __slots__ = ("node", "allocation", "proof")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    node: str
    allocation: str
    proof: str
    def __init__(self, node: _Optional[str] = ..., allocation: _Optional[str] = ..., proof: _Optional[str] = ...) -> None: ...

class AllocationStatus(_message.Message):
    __slots__ = ("live",)
    LIVE_FIELD_NUMBER: _ClassVar[int]
    live: bool
    def __init__(self, live: _Optional[bool] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known", "live_allocations")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    LIVE_ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    known: bool
    live_allocations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, known: _Optional[bool] = ..., live_allocations: _Optional[_Iterable[str]] = ...) -> None: ...

class AllocationRequest(_message.Message):
    __slots__ = ("count", "fraction", "memory", "policy", "same_node", "ttl_s", "wait_s", "owner")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SAME_NODE_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    count: int
    fraction: float
    memory: int
    policy: Policy
    same_node: bool
    ttl_s: float
    wait_s: float
    owner: str
    def __init__(self, count: _Optional[int] = ..., fraction: _Optional[float] = ..., memory: _Optional[int] = ..., policy: _Optional[_Union[Policy, str]] = ..., same_node: _Optional[bool] = ..., ttl_s: _Optional[float] = ..., wait_s: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...

class AllocatedGpu(_message.Message):
    __slots__ = ("node", "address", "index", "name", "memory", "fraction", "grant")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    index: int
    name: str
    memory: int
    fraction: float
    grant: str
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., index: _Optional[int] = ..., name: _Optional[str] = ..., memory: _Optional[int] = ..., fraction: _Optional[float] = ..., grant: _Optional[str] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("id", "gpus", "expires_at", "ttl_s", "owner", "team", "user")
    ID_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    id: str
    gpus: _containers.RepeatedCompositeFieldContainer[AllocatedGpu]
    expires_at: float
    ttl_s: float
    owner: str
    team: str
    user: str
    def __init__(self, id: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[AllocatedGpu, _Mapping]]] = ..., expires_at: _Optional[float] = ..., ttl_s: _Optional[float] = ..., owner: _Optional[str] = ..., team: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class LeaseRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Released(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolGpu(_message.Message):
    __slots__ = ("node", "index", "name", "memory", "memory_used", "fraction_free", "utilization", "up", "allocations", "sessions", "address")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FREE_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node: str
    index: int
    name: str
    memory: int
    memory_used: int
    fraction_free: float
    utilization: int
    up: bool
    allocations: _containers.RepeatedScalarFieldContainer[str]
    sessions: _containers.RepeatedScalarFieldContainer[str]
    address: str
    def __init__(self, node: _Optional[str] = ..., index: _Optional[int] = ..., name: _Optional[str] = ..., memory: _Optional[int] = ..., memory_used: _Optional[int] = ..., fraction_free: _Optional[float] = ..., utilization: _Optional[int] = ..., up: _Optional[bool] = ..., allocations: _Optional[_Iterable[str]] = ..., sessions: _Optional[_Iterable[str]] = ..., address: _Optional[str] = ...) -> None: ...

class PoolState(_message.Message):
    __slots__ = ("gpus", "allocations", "teams")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[PoolGpu]
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    teams: _containers.RepeatedCompositeFieldContainer[TeamUsage]
    def __init__(self, gpus: _Optional[_Iterable[_Union[PoolGpu, _Mapping]]] = ..., allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., teams: _Optional[_Iterable[_Union[TeamUsage, _Mapping]]] = ...) -> None: ...

class TeamUsage(_message.Message):
    __slots__ = ("team", "gpus", "memory", "allocations", "quota_gpus", "quota_memory", "quota_allocations", "gpu_seconds")
    TEAM_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_GPUS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_MEMORY_FIELD_NUMBER: _ClassVar[int]
    QUOTA_ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    team: str
    gpus: float
    memory: int
    allocations: int
    quota_gpus: float
    quota_memory: int
    quota_allocations: int
    gpu_seconds: float
    def __init__(self, team: _Optional[str] = ..., gpus: _Optional[float] = ..., memory: _Optional[int] = ..., allocations: _Optional[int] = ..., quota_gpus: _Optional[float] = ..., quota_memory: _Optional[int] = ..., quota_allocations: _Optional[int] = ..., gpu_seconds: _Optional[float] = ...) -> None: ...
