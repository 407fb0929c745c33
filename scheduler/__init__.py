"""The pool scheduler: leases of whole, fractional and multi-node GPUs (not built yet)."""
