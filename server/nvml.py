"""A GPU's live figures from NVML (``nvidia-ml-py``): memory used and utilisation.

NVML needs no CUDA context, so the front process may ask it. The heartbeats to the
scheduler (``registration.py``) and the daemon's ``/metrics`` (``metrics.py``) read it.
"""

from __future__ import annotations

import logging

from gpupool.logs import fields
from gpupool.server.backends.base import DeviceInfo

log = logging.getLogger(__name__)


class Nvml:
    """NVML's figures of a GPU by UUID (none where NVML is missing)."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # not installed, no driver: figures stay zero
            log.info("no NVML figures", extra=fields(reason=repr(exc)))
            self._nvml = None

    def figures(self, device: DeviceInfo) -> tuple[int, int]:
        """(memory used in bytes, utilisation in percent) of ``device``.

        Found by UUID, or PCI bus id, not by index: CUDA's and NVML's orders may differ.
        """
        if self._nvml is None:
            return 0, 0
        try:
            if device.uuid:
                handle = self._nvml.nvmlDeviceGetHandleByUUID(device.uuid)
            else:
                handle = self._nvml.nvmlDeviceGetHandleByPciBusId(device.pci_bus_id)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
        except Exception as exc:  # a GPU fallen off the bus, say: report zeros, keep beating
            log.warning("NVML failed", extra=fields(device=device.pci_bus_id, reason=repr(exc)))
            return 0, 0
        return int(memory.used), int(rates.gpu)
