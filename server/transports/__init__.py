"""The daemon's ends of its transports.

``grpc://`` is served by the front process (``gpupool.server.service``), which relays each
session's messages to its worker. ``tcp://`` and ``shm://`` connections are accepted by the
front (:mod:`.listener`), which reads the opening frame and hands the socket itself to the
session's worker (SCM_RIGHTS): bulk data then flows between client and worker directly.
:mod:`.channels` is the worker's side of both.
"""
