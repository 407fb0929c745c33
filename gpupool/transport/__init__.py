"""What both ends of the frame transports share: frames on a socket and bulk payload paths.

The client's links (``gpupool.client.transports``) and the daemon's workers
(``gpupool.server.transports``) use the same classes, so a daemon can also reach another
daemon with them (peer copies) without the client library.
"""
