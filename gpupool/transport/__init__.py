"""The transport layer, shared by every process that talks to a worker.

``links`` holds :class:`~gpupool.transport.links.Link` and its scheme registry (gRPC, tcp and
shm frames, UCX): the client's sessions use it, and so does a daemon's worker reaching another
worker (peer copies), without importing the client. ``frames``, ``payload``, ``memcopy`` and
``memfd`` are the pieces both ends of the frame transports share (``gpupool.server.transports``
is the worker's side); ``host_blocks`` is host memory an ``shm://`` link can name by reference.
This package imports only the core (``gpupool.errors``, ``units``, ``addresses``, ``proto``).
"""
