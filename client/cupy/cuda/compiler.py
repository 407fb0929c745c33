"""``cupy.cuda.compiler``: what code that compiles kernels catches.

``CompileException`` is gpupool's ``CompileError`` (the compiler's log in ``.log``), so that
``except cupy.cuda.compiler.CompileException`` catches a kernel that did not compile on the
daemon, NVRTC's or the emulator's compiler alike.
"""

from gpupool.errors import CompileError as CompileException

__all__ = ["CompileException"]
