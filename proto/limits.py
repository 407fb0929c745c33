"""Sizes both ends of the wire agree on."""

CHUNK_SIZE = 2 << 20  # payload bytes per message of a chunked copy, either direction
MESSAGE_LIMIT = 64 << 20  # largest gRPC message either end accepts
# Frame transports: copies up to this size travel inside the message, either way (one frame
# is quicker than a payload's exchange, and a tiny synchronizing copy is all round trip).
INLINE_LIMIT = 64 << 10
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
]
# One server a port: without this, gRPC lets a second daemon or scheduler share the port
# silently, and the kernel splits the connections between the two.
SERVER_OPTIONS = [*GRPC_OPTIONS, ("grpc.so_reuseport", 0)]
