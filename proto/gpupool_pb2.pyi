from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScalarType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCALAR_TYPE_UNSPECIFIED: _ClassVar[ScalarType]
    BOOL: _ClassVar[ScalarType]
    INT8: _ClassVar[ScalarType]
    UINT8: _ClassVar[ScalarType]
    INT16: _ClassVar[ScalarType]
    UINT16: _ClassVar[ScalarType]
    INT32: _ClassVar[ScalarType]
    UINT32: _ClassVar[ScalarType]
    INT64: _ClassVar[ScalarType]
    UINT64: _ClassVar[ScalarType]
    FLOAT16: _ClassVar[ScalarType]
    FLOAT32: _ClassVar[ScalarType]
    FLOAT64: _ClassVar[ScalarType]
    COMPLEX64: _ClassVar[ScalarType]
    COMPLEX128: _ClassVar[ScalarType]
SCALAR_TYPE_UNSPECIFIED: ScalarType
BOOL: ScalarType
INT8: ScalarType
UINT8: ScalarType
INT16: ScalarType
UINT16: ScalarType
INT32: ScalarType
UINT32: ScalarType
INT64: ScalarType
UINT64: ScalarType
FLOAT16: ScalarType
FLOAT32: ScalarType
FLOAT64: ScalarType
COMPLEX64: ScalarType
COMPLEX128: ScalarType

class InfoRequest(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sessions: _Optional[_Iterable[str]] = ...) -> None: ...

class DeviceProperties(_message.Message):
    __slots__ = ("name", "total_memory", "major", "minor", "multiprocessor_count", "max_threads_per_block", "warp_size", "shared_memory_per_block", "clock_rate_khz", "pci_bus_id", "uuid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    MULTIPROCESSOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_THREADS_PER_BLOCK_FIELD_NUMBER: _ClassVar[int]
    WARP_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_PER_BLOCK_FIELD_NUMBER: _ClassVar[int]
    CLOCK_RATE_KHZ_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_ID_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    total_memory: int
    major: int
    minor: int
    multiprocessor_count: int
    max_threads_per_block: int
    warp_size: int
    shared_memory_per_block: int
    clock_rate_khz: int
    pci_bus_id: str
    uuid: str
    def __init__(self, name: _Optional[str] = ..., total_memory: _Optional[int] = ..., major: _Optional[int] = ..., minor: _Optional[int] = ..., multiprocessor_count: _Optional[int] = ..., max_threads_per_block: _Optional[int] = ..., warp_size: _Optional[int] = ..., shared_memory_per_block: _Optional[int] = ..., clock_rate_khz: _Optional[int] = ..., pci_bus_id: _Optional[str] = ..., uuid: _Optional[str] = ...) -> None: ...

class DaemonInfo(_message.Message):
    __slots__ = ("version", "backend", "devices", "endpoints", "stopped_sessions", "unknown_sessions")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    STOPPED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    version: str
    backend: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceProperties]
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    stopped_sessions: _containers.RepeatedScalarFieldContainer[str]
    unknown_sessions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., backend: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceProperties, _Mapping]]] = ..., endpoints: _Optional[_Iterable[str]] = ..., stopped_sessions: _Optional[_Iterable[str]] = ..., unknown_sessions: _Optional[_Iterable[str]] = ...) -> None: ...

class Dim3(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    z: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., z: _Optional[int] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("type", "data")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    type: ScalarType
    data: bytes
    def __init__(self, type: _Optional[_Union[ScalarType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("device", "token", "limits", "stripes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    device: int
    token: str
    limits: SessionLimits
    stripes: int
    def __init__(self, device: _Optional[int] = ..., token: _Optional[str] = ..., limits: _Optional[_Union[SessionLimits, _Mapping]] = ..., stripes: _Optional[int] = ...) -> None: ...

class MemGetInfo(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Malloc(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class Free(_message.Message):
    __slots__ = ("ptr",)
    PTR_FIELD_NUMBER: _ClassVar[int]
    ptr: int
    def __init__(self, ptr: _Optional[int] = ...) -> None: ...

class MemcpyHtoD(_message.Message):
    __slots__ = ("dst", "size", "stream", "data", "host")
    DST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    dst: int
    size: int
    stream: int
    data: bytes
    host: HostRef
    def __init__(self, dst: _Optional[int] = ..., size: _Optional[int] = ..., stream: _Optional[int] = ..., data: _Optional[bytes] = ..., host: _Optional[_Union[HostRef, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class MemcpyDtoH(_message.Message):
    __slots__ = ("src", "size", "stream", "host")
    SRC_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    src: int
    size: int
    stream: int
    host: HostRef
    def __init__(self, src: _Optional[int] = ..., size: _Optional[int] = ..., stream: _Optional[int] = ..., host: _Optional[_Union[HostRef, _Mapping]] = ...) -> None: ...

class HostRef(_message.Message):
    __slots__ = ("block", "offset")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    block: int
    offset: int
    def __init__(self, block: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class MemcpyDtoD(_message.Message):
    __slots__ = ("dst", "src", "size", "stream")
    DST_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    dst: int
    src: int
    size: int
    stream: int
    def __init__(self, dst: _Optional[int] = ..., src: _Optional[int] = ..., size: _Optional[int] = ..., stream: _Optional[int] = ...) -> None: ...

class Memset(_message.Message):
    __slots__ = ("ptr", "value", "size", "stream")
    PTR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ptr: int
    value: int
    size: int
    stream: int
    def __init__(self, ptr: _Optional[int] = ..., value: _Optional[int] = ..., size: _Optional[int] = ..., stream: _Optional[int] = ...) -> None: ...

class ModuleLoad(_message.Message):
    __slots__ = ("module", "cuda_source", "ptx", "cubin", "options")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    CUDA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PTX_FIELD_NUMBER: _ClassVar[int]
    CUBIN_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    module: int
    cuda_source: str
    ptx: bytes
    cubin: bytes
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, module: _Optional[int] = ..., cuda_source: _Optional[str] = ..., ptx: _Optional[bytes] = ..., cubin: _Optional[bytes] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...

class ModuleUnload(_message.Message):
    __slots__ = ("module",)
    MODULE_FIELD_NUMBER: _ClassVar[int]
    module: int
    def __init__(self, module: _Optional[int] = ...) -> None: ...

class GetFunction(_message.Message):
    __slots__ = ("module", "name", "function")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    module: int
    name: str
    function: int
    def __init__(self, module: _Optional[int] = ..., name: _Optional[str] = ..., function: _Optional[int] = ...) -> None: ...

class LaunchConfig(_message.Message):
    __slots__ = ("function", "grid", "block", "shared_mem", "stream", "arg_types")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEM_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ARG_TYPES_FIELD_NUMBER: _ClassVar[int]
    function: int
    grid: Dim3
    block: Dim3
    shared_mem: int
    stream: int
    arg_types: bytes
    def __init__(self, function: _Optional[int] = ..., grid: _Optional[_Union[Dim3, _Mapping]] = ..., block: _Optional[_Union[Dim3, _Mapping]] = ..., shared_mem: _Optional[int] = ..., stream: _Optional[int] = ..., arg_types: _Optional[bytes] = ...) -> None: ...

class Launch(_message.Message):
    __slots__ = ("config", "arg_data")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ARG_DATA_FIELD_NUMBER: _ClassVar[int]
    config: bytes
    arg_data: bytes
    def __init__(self, config: _Optional[bytes] = ..., arg_data: _Optional[bytes] = ...) -> None: ...

class StreamCreate(_message.Message):
    __slots__ = ("stream",)
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream: int
    def __init__(self, stream: _Optional[int] = ...) -> None: ...

class StreamDestroy(_message.Message):
    __slots__ = ("stream",)
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream: int
    def __init__(self, stream: _Optional[int] = ...) -> None: ...

class StreamSynchronize(_message.Message):
    __slots__ = ("stream",)
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream: int
    def __init__(self, stream: _Optional[int] = ...) -> None: ...

class StreamWaitEvent(_message.Message):
    __slots__ = ("stream", "event")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    stream: int
    event: int
    def __init__(self, stream: _Optional[int] = ..., event: _Optional[int] = ...) -> None: ...

class EventCreate(_message.Message):
    __slots__ = ("event", "disable_timing")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DISABLE_TIMING_FIELD_NUMBER: _ClassVar[int]
    event: int
    disable_timing: bool
    def __init__(self, event: _Optional[int] = ..., disable_timing: _Optional[bool] = ...) -> None: ...

class EventDestroy(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: int
    def __init__(self, event: _Optional[int] = ...) -> None: ...

class EventRecord(_message.Message):
    __slots__ = ("event", "stream")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    event: int
    stream: int
    def __init__(self, event: _Optional[int] = ..., stream: _Optional[int] = ...) -> None: ...

class EventQuery(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: int
    def __init__(self, event: _Optional[int] = ...) -> None: ...

class EventSynchronize(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: int
    def __init__(self, event: _Optional[int] = ...) -> None: ...

class EventElapsedTime(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class DeviceSynchronize(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerConnect(_message.Message):
    __slots__ = ("link", "url", "key", "token", "stripes")
    LINK_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    link: int
    url: str
    key: bytes
    token: str
    stripes: int
    def __init__(self, link: _Optional[int] = ..., url: _Optional[str] = ..., key: _Optional[bytes] = ..., token: _Optional[str] = ..., stripes: _Optional[int] = ...) -> None: ...

class PeerSend(_message.Message):
    __slots__ = ("link", "src", "size", "stream")
    LINK_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    link: int
    src: int
    size: int
    stream: int
    def __init__(self, link: _Optional[int] = ..., src: _Optional[int] = ..., size: _Optional[int] = ..., stream: _Optional[int] = ...) -> None: ...

class PeerRecv(_message.Message):
    __slots__ = ("link", "dst", "size", "stream")
    LINK_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    link: int
    dst: int
    size: int
    stream: int
    def __init__(self, link: _Optional[int] = ..., dst: _Optional[int] = ..., size: _Optional[int] = ..., stream: _Optional[int] = ...) -> None: ...

class Collective(_message.Message):
    __slots__ = ("kind", "send", "recv", "count", "dtype", "op", "rank", "ranks", "root", "next", "prev", "stream")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALL_REDUCE: _ClassVar[Collective.Kind]
        REDUCE: _ClassVar[Collective.Kind]
        BROADCAST: _ClassVar[Collective.Kind]
        ALL_GATHER: _ClassVar[Collective.Kind]
        REDUCE_SCATTER: _ClassVar[Collective.Kind]
    ALL_REDUCE: Collective.Kind
    REDUCE: Collective.Kind
    BROADCAST: Collective.Kind
    ALL_GATHER: Collective.Kind
    REDUCE_SCATTER: Collective.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    RECV_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    kind: Collective.Kind
    send: int
    recv: int
    count: int
    dtype: str
    op: str
    rank: int
    ranks: int
    root: int
    next: int
    prev: int
    stream: int
    def __init__(self, kind: _Optional[_Union[Collective.Kind, str]] = ..., send: _Optional[int] = ..., recv: _Optional[int] = ..., count: _Optional[int] = ..., dtype: _Optional[str] = ..., op: _Optional[str] = ..., rank: _Optional[int] = ..., ranks: _Optional[int] = ..., root: _Optional[int] = ..., next: _Optional[int] = ..., prev: _Optional[int] = ..., stream: _Optional[int] = ...) -> None: ...

class AttachPeer(_message.Message):
    __slots__ = ("key", "token", "link", "stripe", "stripes")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    token: str
    link: int
    stripe: int
    stripes: int
    def __init__(self, key: _Optional[bytes] = ..., token: _Optional[str] = ..., link: _Optional[int] = ..., stripe: _Optional[int] = ..., stripes: _Optional[int] = ...) -> None: ...

class PeerData(_message.Message):
    __slots__ = ("size", "error", "region", "offset", "region_size", "ipc")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    REGION_SIZE_FIELD_NUMBER: _ClassVar[int]
    IPC_FIELD_NUMBER: _ClassVar[int]
    size: int
    error: Error
    region: int
    offset: int
    region_size: int
    ipc: bytes
    def __init__(self, size: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., region: _Optional[int] = ..., offset: _Optional[int] = ..., region_size: _Optional[int] = ..., ipc: _Optional[bytes] = ...) -> None: ...

class PeerHandover(_message.Message):
    __slots__ = ("link", "stripe", "stripes")
    LINK_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    link: int
    stripe: int
    stripes: int
    def __init__(self, link: _Optional[int] = ..., stripe: _Optional[int] = ..., stripes: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[Request]
    def __init__(self, requests: _Optional[_Iterable[_Union[Request, _Mapping]]] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("wait", "open", "mem_get_info", "malloc", "free", "memcpy_htod", "chunk", "memcpy_dtoh", "memcpy_dtod", "memset", "module_load", "module_unload", "get_function", "launch", "stream_create", "stream_destroy", "stream_synchronize", "stream_wait_event", "event_create", "event_destroy", "event_record", "event_query", "event_synchronize", "event_elapsed_time", "device_synchronize", "batch", "array_op", "torch_op", "peer_connect", "peer_send", "peer_recv", "collective", "attach", "attach_peer")
    WAIT_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    MEM_GET_INFO_FIELD_NUMBER: _ClassVar[int]
    MALLOC_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    MEMCPY_HTOD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    MEMCPY_DTOH_FIELD_NUMBER: _ClassVar[int]
    MEMCPY_DTOD_FIELD_NUMBER: _ClassVar[int]
    MEMSET_FIELD_NUMBER: _ClassVar[int]
    MODULE_LOAD_FIELD_NUMBER: _ClassVar[int]
    MODULE_UNLOAD_FIELD_NUMBER: _ClassVar[int]
    GET_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_FIELD_NUMBER: _ClassVar[int]
    STREAM_CREATE_FIELD_NUMBER: _ClassVar[int]
    STREAM_DESTROY_FIELD_NUMBER: _ClassVar[int]
    STREAM_SYNCHRONIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_WAIT_EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENT_CREATE_FIELD_NUMBER: _ClassVar[int]
    EVENT_DESTROY_FIELD_NUMBER: _ClassVar[int]
    EVENT_RECORD_FIELD_NUMBER: _ClassVar[int]
    EVENT_QUERY_FIELD_NUMBER: _ClassVar[int]
    EVENT_SYNCHRONIZE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ELAPSED_TIME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SYNCHRONIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ARRAY_OP_FIELD_NUMBER: _ClassVar[int]
    TORCH_OP_FIELD_NUMBER: _ClassVar[int]
    PEER_CONNECT_FIELD_NUMBER: _ClassVar[int]
    PEER_SEND_FIELD_NUMBER: _ClassVar[int]
    PEER_RECV_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    ATTACH_PEER_FIELD_NUMBER: _ClassVar[int]
    wait: bool
    open: OpenSession
    mem_get_info: MemGetInfo
    malloc: Malloc
    free: Free
    memcpy_htod: MemcpyHtoD
    chunk: Chunk
    memcpy_dtoh: MemcpyDtoH
    memcpy_dtod: MemcpyDtoD
    memset: Memset
    module_load: ModuleLoad
    module_unload: ModuleUnload
    get_function: GetFunction
    launch: Launch
    stream_create: StreamCreate
    stream_destroy: StreamDestroy
    stream_synchronize: StreamSynchronize
    stream_wait_event: StreamWaitEvent
    event_create: EventCreate
    event_destroy: EventDestroy
    event_record: EventRecord
    event_query: EventQuery
    event_synchronize: EventSynchronize
    event_elapsed_time: EventElapsedTime
    device_synchronize: DeviceSynchronize
    batch: Batch
    array_op: ArrayOp
    torch_op: TorchOp
    peer_connect: PeerConnect
    peer_send: PeerSend
    peer_recv: PeerRecv
    collective: Collective
    attach: AttachStripe
    attach_peer: AttachPeer
    def __init__(self, wait: _Optional[bool] = ..., open: _Optional[_Union[OpenSession, _Mapping]] = ..., mem_get_info: _Optional[_Union[MemGetInfo, _Mapping]] = ..., malloc: _Optional[_Union[Malloc, _Mapping]] = ..., free: _Optional[_Union[Free, _Mapping]] = ..., memcpy_htod: _Optional[_Union[MemcpyHtoD, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., memcpy_dtoh: _Optional[_Union[MemcpyDtoH, _Mapping]] = ..., memcpy_dtod: _Optional[_Union[MemcpyDtoD, _Mapping]] = ..., memset: _Optional[_Union[Memset, _Mapping]] = ..., module_load: _Optional[_Union[ModuleLoad, _Mapping]] = ..., module_unload: _Optional[_Union[ModuleUnload, _Mapping]] = ..., get_function: _Optional[_Union[GetFunction, _Mapping]] = ..., launch: _Optional[_Union[Launch, _Mapping]] = ..., stream_create: _Optional[_Union[StreamCreate, _Mapping]] = ..., stream_destroy: _Optional[_Union[StreamDestroy, _Mapping]] = ..., stream_synchronize: _Optional[_Union[StreamSynchronize, _Mapping]] = ..., stream_wait_event: _Optional[_Union[StreamWaitEvent, _Mapping]] = ..., event_create: _Optional[_Union[EventCreate, _Mapping]] = ..., event_destroy: _Optional[_Union[EventDestroy, _Mapping]] = ..., event_record: _Optional[_Union[EventRecord, _Mapping]] = ..., event_query: _Optional[_Union[EventQuery, _Mapping]] = ..., event_synchronize: _Optional[_Union[EventSynchronize, _Mapping]] = ..., event_elapsed_time: _Optional[_Union[EventElapsedTime, _Mapping]] = ..., device_synchronize: _Optional[_Union[DeviceSynchronize, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., array_op: _Optional[_Union[ArrayOp, _Mapping]] = ..., torch_op: _Optional[_Union[TorchOp, _Mapping]] = ..., peer_connect: _Optional[_Union[PeerConnect, _Mapping]] = ..., peer_send: _Optional[_Union[PeerSend, _Mapping]] = ..., peer_recv: _Optional[_Union[PeerRecv, _Mapping]] = ..., collective: _Optional[_Union[Collective, _Mapping]] = ..., attach: _Optional[_Union[AttachStripe, _Mapping]] = ..., attach_peer: _Optional[_Union[AttachPeer, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("name", "message", "log")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    name: str
    message: str
    log: str
    def __init__(self, name: _Optional[str] = ..., message: _Optional[str] = ..., log: _Optional[str] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "properties", "key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    properties: DeviceProperties
    key: bytes
    def __init__(self, session_id: _Optional[str] = ..., properties: _Optional[_Union[DeviceProperties, _Mapping]] = ..., key: _Optional[bytes] = ...) -> None: ...

class MemInfo(_message.Message):
    __slots__ = ("free", "total")
    FREE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    free: int
    total: int
    def __init__(self, free: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("error", "more", "opened", "mem_info", "ptr", "data", "ready", "elapsed_ms")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    MEM_INFO_FIELD_NUMBER: _ClassVar[int]
    PTR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    more: bool
    opened: SessionOpened
    mem_info: MemInfo
    ptr: int
    data: bytes
    ready: bool
    elapsed_ms: float
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., more: _Optional[bool] = ..., opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., mem_info: _Optional[_Union[MemInfo, _Mapping]] = ..., ptr: _Optional[int] = ..., data: _Optional[bytes] = ..., ready: _Optional[bool] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class SessionLimits(_message.Message):
    __slots__ = ("allocation", "memory", "fraction")
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    allocation: str
    memory: int
    fraction: float
    def __init__(self, allocation: _Optional[str] = ..., memory: _Optional[int] = ..., fraction: _Optional[float] = ...) -> None: ...

class ArrayDesc(_message.Message):
    __slots__ = ("ptr", "shape", "strides", "dtype")
    PTR_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    STRIDES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ptr: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    strides: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, ptr: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., strides: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class SliceOperand(_message.Message):
    __slots__ = ("start", "stop", "step")
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    start: int
    stop: int
    step: int
    def __init__(self, start: _Optional[int] = ..., stop: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class OperandList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Operand]
    def __init__(self, items: _Optional[_Iterable[_Union[Operand, _Mapping]]] = ...) -> None: ...

class ComplexOperand(_message.Message):
    __slots__ = ("real", "imag")
    REAL_FIELD_NUMBER: _ClassVar[int]
    IMAG_FIELD_NUMBER: _ClassVar[int]
    real: float
    imag: float
    def __init__(self, real: _Optional[float] = ..., imag: _Optional[float] = ...) -> None: ...

class Operand(_message.Message):
    __slots__ = ("array", "scalar", "integer", "unsigned", "real", "complex", "boolean", "sequence", "slice", "none", "ellipsis", "dtype", "text")
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    SCALAR_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    UNSIGNED_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    COMPLEX_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    ELLIPSIS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    array: ArrayDesc
    scalar: Scalar
    integer: int
    unsigned: int
    real: float
    complex: ComplexOperand
    boolean: bool
    sequence: OperandList
    slice: SliceOperand
    none: bool
    ellipsis: bool
    dtype: str
    text: str
    def __init__(self, array: _Optional[_Union[ArrayDesc, _Mapping]] = ..., scalar: _Optional[_Union[Scalar, _Mapping]] = ..., integer: _Optional[int] = ..., unsigned: _Optional[int] = ..., real: _Optional[float] = ..., complex: _Optional[_Union[ComplexOperand, _Mapping]] = ..., boolean: _Optional[bool] = ..., sequence: _Optional[_Union[OperandList, _Mapping]] = ..., slice: _Optional[_Union[SliceOperand, _Mapping]] = ..., none: _Optional[bool] = ..., ellipsis: _Optional[bool] = ..., dtype: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class Keyword(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: Operand
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[Operand, _Mapping]] = ...) -> None: ...

class ArrayOp(_message.Message):
    __slots__ = ("function", "args", "kwargs", "out", "stream", "generator")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    OUT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    function: str
    args: _containers.RepeatedCompositeFieldContainer[Operand]
    kwargs: _containers.RepeatedCompositeFieldContainer[Keyword]
    out: _containers.RepeatedCompositeFieldContainer[ArrayDesc]
    stream: int
    generator: int
    def __init__(self, function: _Optional[str] = ..., args: _Optional[_Iterable[_Union[Operand, _Mapping]]] = ..., kwargs: _Optional[_Iterable[_Union[Keyword, _Mapping]]] = ..., out: _Optional[_Iterable[_Union[ArrayDesc, _Mapping]]] = ..., stream: _Optional[int] = ..., generator: _Optional[int] = ...) -> None: ...

class TorchOp(_message.Message):
    __slots__ = ("config", "pointers", "stream")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    POINTERS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    config: bytes
    pointers: bytes
    stream: int
    def __init__(self, config: _Optional[bytes] = ..., pointers: _Optional[bytes] = ..., stream: _Optional[int] = ...) -> None: ...

class TorchOpConfig(_message.Message):
    __slots__ = ("op", "args", "kwargs", "out")
    OP_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    OUT_FIELD_NUMBER: _ClassVar[int]
    op: str
    args: _containers.RepeatedCompositeFieldContainer[TorchValue]
    kwargs: _containers.RepeatedCompositeFieldContainer[TorchKeyword]
    out: _containers.RepeatedCompositeFieldContainer[TorchTensor]
    def __init__(self, op: _Optional[str] = ..., args: _Optional[_Iterable[_Union[TorchValue, _Mapping]]] = ..., kwargs: _Optional[_Iterable[_Union[TorchKeyword, _Mapping]]] = ..., out: _Optional[_Iterable[_Union[TorchTensor, _Mapping]]] = ...) -> None: ...

class TorchTensor(_message.Message):
    __slots__ = ("shape", "strides", "dtype")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    STRIDES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    strides: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., strides: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class TorchValueList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TorchValue]
    def __init__(self, items: _Optional[_Iterable[_Union[TorchValue, _Mapping]]] = ...) -> None: ...

class TorchValue(_message.Message):
    __slots__ = ("tensor", "integer", "real", "boolean", "none", "list", "dtype", "memory_format", "layout", "complex", "text", "cpu_scalar")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    COMPLEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CPU_SCALAR_FIELD_NUMBER: _ClassVar[int]
    tensor: TorchTensor
    integer: int
    real: float
    boolean: bool
    none: bool
    list: TorchValueList
    dtype: str
    memory_format: str
    layout: str
    complex: ComplexOperand
    text: str
    cpu_scalar: TorchCpuScalar
    def __init__(self, tensor: _Optional[_Union[TorchTensor, _Mapping]] = ..., integer: _Optional[int] = ..., real: _Optional[float] = ..., boolean: _Optional[bool] = ..., none: _Optional[bool] = ..., list: _Optional[_Union[TorchValueList, _Mapping]] = ..., dtype: _Optional[str] = ..., memory_format: _Optional[str] = ..., layout: _Optional[str] = ..., complex: _Optional[_Union[ComplexOperand, _Mapping]] = ..., text: _Optional[str] = ..., cpu_scalar: _Optional[_Union[TorchCpuScalar, _Mapping]] = ...) -> None: ...

class TorchCpuScalar(_message.Message):
    __slots__ = ("dtype", "integer", "real", "boolean", "complex")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    COMPLEX_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    integer: int
    real: float
    boolean: bool
    complex: ComplexOperand
    def __init__(self, dtype: _Optional[str] = ..., integer: _Optional[int] = ..., real: _Optional[float] = ..., boolean: _Optional[bool] = ..., complex: _Optional[_Union[ComplexOperand, _Mapping]] = ...) -> None: ...

class TorchKeyword(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: TorchValue
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[TorchValue, _Mapping]] = ...) -> None: ...

class ShareHost(_message.Message):
    __slots__ = ("block",)
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    block: int
    def __init__(self, block: _Optional[int] = ...) -> None: ...

class DropHost(_message.Message):
    __slots__ = ("blocks",)
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, blocks: _Optional[_Iterable[int]] = ...) -> None: ...

class AttachStripe(_message.Message):
    __slots__ = ("key", "stripe")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    stripe: int
    def __init__(self, key: _Optional[bytes] = ..., stripe: _Optional[int] = ...) -> None: ...

class Handover(_message.Message):
    __slots__ = ("session_id", "key", "first", "stripe", "shared_memory", "peer")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    key: bytes
    first: bytes
    stripe: int
    shared_memory: bool
    peer: PeerHandover
    def __init__(self, session_id: _Optional[str] = ..., key: _Optional[bytes] = ..., first: _Optional[bytes] = ..., stripe: _Optional[int] = ..., shared_memory: _Optional[bool] = ..., peer: _Optional[_Union[PeerHandover, _Mapping]] = ...) -> None: ...
