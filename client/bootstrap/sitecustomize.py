"""gpupool run's start-up hook: ``import cupy`` loads gpupool.cupy (gpupool.client.import_hook)."""

import os
import sys

try:
    from gpupool.client import import_hook
except ImportError:
    sys.stderr.write(
        f"gpupool run: {sys.executable} cannot import gpupool, so its 'import cupy' is not"
        " redirected to gpupool.cupy (install gpupool in that environment)\n"
    )
else:
    import_hook.install()
    if os.environ.get("GPUPOOL_TORCH") == "cuda":  # gpupool run --torch

        def _cuda_as_pool() -> None:
            from gpupool.torch import cuda

            cuda.install()

        import_hook.after_import("torch", _cuda_as_pool)
    import_hook.run_next_sitecustomize(os.path.dirname(os.path.abspath(__file__)))
