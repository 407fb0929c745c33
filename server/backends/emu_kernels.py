"""CUDA C kernels for the CPU emulator: compiled by the host C++ compiler, launched with ctypes.

In the emulator a device pointer is a host address of the worker process, so a kernel can run
as ordinary host code. The user's CUDA C source is compiled by g++ with ``gpupool_emu.h`` in
front (which turns CUDA's keywords, built-in variables, atomics and intrinsics into host C++),
stub CUDA headers first on the include path (``emu_include/``: NVRTC has the CUDA headers built
in, g++ does not) and one generated launcher per kernel behind. Python never parses C++ types:
the launchers deduce each kernel's parameters from their function type and report their count
and sizes.

Python looks at the source only textually, and at the preprocessor's output for it, so that
macros, user headers and ``#if`` are seen as the compiler sees them: to find kernel names, to
refuse CUDA constructs the emulator cannot run (maskless warp operations, inline PTX,
textures...) and to decide how the kernels run. A module that mentions ``__syncthreads`` or a
warp-level operation anywhere runs every kernel's blocks with each CUDA thread a fiber (a stack
of its own) on one host thread, run by a scheduler there: at ``__syncthreads()`` a fiber waits
until every fiber still in the kernel has reached the barrier (those that returned count as
arrived); at a shuffle, vote, match, warp reduction or ``__syncwarp`` until the lanes of its
warp that the masks name have (see gpupool_emu.h's FiberTeam). Any other module runs
a block's threads as a plain loop, faster still. Either way a host thread runs whole
blocks, and as many host threads as pay off share the blocks of a launch (a module without
barriers but with ``__shared__`` memory keeps to one). ``__shared__`` variables are static
``thread_local`` storage, so that blocks running at once do not share them. The user's own source
is compiled (not the preprocessor's output), with ``#line``, so that compile errors point at its
lines; its ``extern __shared__`` arrays are rewritten onto the host thread's dynamic shared memory.

A fiber has 256 KiB of stack (a deeper recursion faults on a guard page, which ends the worker
process); ``GPUPOOL_EMU_STACK_KIB`` in the environment of the process that launches sets another
size, read at each launch.

Known limitations: the threads of a block do not run in lockstep, so warp-synchronous code that
relies on it without a warp operation (the volatile shared-memory tail of old reductions) gives
wrong results here; and a thread runs until its next barrier or its return, so one that spins
waiting for another thread of its block (not at a barrier) never ends. Neither is detected.

Compiled modules are cached by content hash and written atomically, because several worker
processes compile the same kernels at the same time; each module loads a private copy (in the
process's own temporary folder), so that its ``__device__`` variables are its own, as in CUDA.
A confined worker compiles nothing itself: the daemon's compile service runs
:func:`compile_module` for it (``emu_compile_service.py``), and it loads the result.

The compiler reads nothing of the daemon's: it runs in an empty folder, and the preprocessor's
line markers must name only the emulator's and the compiler's own headers
(:func:`check_included`) before any of its output goes back.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpupool.errors import CUDA_ERROR_CODES, CompileError, CUDARuntimeError
from gpupool.server.backends.base import check_launch

HEADER = Path(__file__).with_name("gpupool_emu.h")
# Stub CUDA headers (cuda_runtime.h, cuda_fp16.h, assert.h...), each including HEADER: NVRTC has
# the CUDA headers built in, and g++ must not find the C assert (it aborts the worker process).
STUB_INCLUDE = Path(__file__).with_name("emu_include")
# The name g++ reports for the user's source, so that its line numbers are the user's.
SOURCE_NAME = "kernel.cu"

# -ffp-contract=off: no fused multiply-adds the source did not ask for, so results match numpy.
# -fno-strict-aliasing: CUDA code reinterprets buffers (float4 over float) as nvcc allows.
# -fvisibility=hidden: only the launchers are exported, so user functions inline freely.
CXX_FLAGS = (
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-pthread",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-fno-math-errno",
    "-fvisibility=hidden",
)
# -z defs: an undefined symbol (a declared but never defined kernel) fails here, with a log,
# instead of later in dlopen.
LINK_FLAGS = ("-shared", "-Wl,-z,defs")
COMPILE_TIMEOUT_S = 600

# CUDA's limits for a launch (compute capability 7.0 and later).

_ERROR_NAMES = {code: name for name, code in CUDA_ERROR_CODES.items()}
_ERROR_BUFFER_SIZE = 1024
_ARG_ALIGNMENT = 16

# ---------------------------------------------------------------------------------------------
# Reading the source.

_COMMENT_OR_LITERAL = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.DOTALL
)
_DIRECTIVE = re.compile(r"^[ \t]*#[^\n]*", re.MULTILINE)
# The preprocessor's line markers: `# 12 "file" 1 3`, where flag 3 means a system header.
_LINE_MARKER = re.compile(r'# \d+ "(?:\\.|[^"\\])*"((?: \d)*)')
_NAMESPACE_OPENER = re.compile(r"(?:\bnamespace\s*([\w:]*)|\bextern\s*\"[^\"]*\")\s*$")
_KERNEL = re.compile(
    r"\b__global__\s+(?:\w+(?:\s*\([^()]*\))?\s+)*?void\s+"
    r"(?:__launch_bounds__\s*\([^()]*\)\s*)?(\w+)\s*\("
)
_TEMPLATE = re.compile(r"\btemplate\b")
_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\s+([^;{}\[\]]*?)\b(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"\bstatic(?=\s+__shared__\b)")
_ALIGNMENT = re.compile(r"\b(?:__align__|alignas)\s*\([^()]*\)")
_SHARED = re.compile(r"\b__shared__\b")
# What makes a module's kernels run as fibers: block barriers, and the warp-level operations
# and cooperative groups, whose lanes meet the same way (see gpupool_emu.h's FiberTeam).
_SYNC = re.compile(
    r"\b(?:__syncthreads\w*|__syncwarp|__shfl_(?:up_|down_|xor_)?sync|__ballot_sync"
    r"|__any_sync|__all_sync|__uni_sync|__activemask|__match_(?:any|all)_sync"
    r"|__reduce_\w+_sync|cooperative_groups)\b"
)

# Constructs with no meaning without real warps or GPU hardware: (pattern, what it is).
_UNSUPPORTED = (
    (
        r"\b(?:__shfl|__shfl_up|__shfl_down|__shfl_xor|__ballot|__any|__all)\b",
        "a warp operation without a mask (removed in CUDA 9; use its _sync form)",
    ),
    (r"\b(?:this_grid|grid_group|this_multi_grid|multi_grid_group)\b", "grid-wide groups"),
    (r"\b(?:asm|__asm__|__asm)\b", "inline assembly"),
    (r"\b(?:tex[123]D\w*|texCubemap\w*|cudaTextureObject_t|texture(?=\s*<))", "texture"),
    (r"\b(?:surf[123]D\w*|surfCubemap\w*|cudaSurfaceObject_t|surface(?=\s*<))", "surface"),
    (r"\b__nanosleep\b", "sleep"),
    (r"\b(?:clock64|__globaltimer|clock(?=\s*\())", "GPU clock"),
    (r"\b__nv_bfloat16\w*", "bfloat16"),
    (r"\bcurand\w*", "cuRAND device API"),
    (r"\b(?:__pipeline\w*|memcpy_async|__cp_async\w*)", "asynchronous copy"),
    (r"<<<", "dynamic parallelism, a kernel launch inside device code"),
)


def _blank(text: str) -> str:
    """Spaces for every character but newlines, so offsets and line numbers stay put."""
    return re.sub(r"[^\n]", " ", text)


def _mask_comments_and_literals(source: str) -> str:
    """The source with comments and the insides of string/char literals blanked."""

    def blank(match: re.Match[str]) -> str:
        text = match.group()
        if text[0] in "\"'":
            return text[0] + _blank(text[1:-1]) + text[-1]
        return _blank(text)

    return _COMMENT_OR_LITERAL.sub(blank, source)


def _user_code(preprocessed: str) -> str:
    """The preprocessed text that came from the user's source and headers, not from system
    headers (glibc's declarations use asm, for one), literals masked and directives blanked."""
    kept = []
    from_system = False
    for line in preprocessed.splitlines(keepends=True):
        marker = _LINE_MARKER.match(line)
        if marker:
            from_system = "3" in marker.group(1).split()
        elif not from_system:
            kept.append(line)
    code = _mask_comments_and_literals("".join(kept))
    return _DIRECTIVE.sub("", code)


@dataclass(frozen=True)
class _Block:
    """A brace pair; ``namespace`` is its name for namespaces and extern "C" blocks ("" when
    anonymous) and None for everything else (function bodies, classes, initialisers)."""

    start: int
    end: int
    namespace: str | None

    def contains(self, offset: int) -> bool:
        return self.start < offset < self.end


def _blocks(code: str) -> list[_Block]:
    """Every brace pair of masked, directive-free code, outermost first."""
    blocks: list[_Block] = []
    open_blocks: list[tuple[int, str | None]] = []
    for brace in re.finditer(r"[{}]", code):
        if brace.group() == "{":
            opener = _NAMESPACE_OPENER.search(code, max(0, brace.start() - 200), brace.start())
            open_blocks.append((brace.start(), (opener.group(1) or "") if opener else None))
        elif open_blocks:
            start, namespace = open_blocks.pop()
            blocks.append(_Block(start, brace.end(), namespace))
    blocks.extend(_Block(start, len(code), namespace) for start, namespace in open_blocks)
    return sorted(blocks, key=lambda block: block.start)


def _namespace_at(blocks: Sequence[_Block], offset: int) -> str:
    names = [block.namespace for block in blocks if block.namespace and block.contains(offset)]
    return "::".join(names)


def _refuse_unsupported(code: str) -> None:
    """Raises CompileError for the first construct the emulator cannot run."""
    found = []
    for pattern, what in _UNSUPPORTED:
        match = re.search(pattern, code)
        if match:
            found.append((match.start(), match.group(), what))
    if found:
        _, construct, what = min(found)
        raise CompileError(
            f"the emulator cannot run '{construct}' ({what}): run this kernel on a GPU daemon"
        )


@dataclass(frozen=True)
class _Translation:
    """The user's source made ready for g++, and what the launchers need to know: the kernels'
    qualified names, and how every kernel of the module runs."""

    source: str
    kernels: tuple[str, ...]
    cooperative: bool
    shared_statics: bool

    @property
    def names(self) -> list[str]:
        return [qualified.rpartition("::")[2] for qualified in self.kernels]


def _find_kernels(code: str) -> list[str]:
    """The qualified names of the non-template kernels at namespace scope (templates have no
    name to launch them by), first definition or declaration of each name."""
    blocks = _blocks(code)
    kernels: dict[str, str] = {}
    for match in _KERNEL.finditer(code):
        statement_start = max(code.rfind(c, 0, match.start()) for c in ";{}") + 1
        name = match.group(1)
        if _TEMPLATE.search(code, statement_start, match.start()) or name in kernels:
            continue
        namespace = _namespace_at(blocks, match.start())
        kernels[name] = f"{namespace}::{name}" if namespace else name
    return list(kernels.values())


def _rewrite_shared(source: str) -> str:
    """Makes the user's own ``__shared__`` declarations host C++ (``__shared__`` is ``static``).

    ``static __shared__`` loses its ``static``. Every ``extern __shared__ T name[];`` becomes a
    ``thread_local`` reference to the dynamic shared memory of the host thread that runs the
    block (read as a ``T*``, which -fno-strict-aliasing allows), so that the name works as the
    array did in every expression, at any scope, on every host thread. Offsets and line numbers
    stay those of the source; user headers are not rewritten.
    """
    code = _mask_comments_and_literals(source)
    pieces = []
    done = 0
    for match in _EXTERN_SHARED.finditer(code):
        element = _ALIGNMENT.sub("", source[match.start(1) : match.end(1)]).strip()
        replacement = (
            f"thread_local {element}* const& {match.group(2)} = "
            f"reinterpret_cast<{element}* const&>(::gpupool_emu::g_dynamic_shared);"
        )
        pieces += [source[done : match.start()], replacement, "\n" * match.group().count("\n")]
        done = match.end()
    pieces.append(source[done:])
    rewritten = "".join(pieces)
    statics = [m.span() for m in _STATIC_SHARED.finditer(_mask_comments_and_literals(rewritten))]
    for start, end in reversed(statics):
        rewritten = rewritten[:start] + " " * (end - start) + rewritten[end:]
    return rewritten


_INTEGER_WORDS = r"(?:(?:un)?signed|long|short|int|char)"
_STANDARD_TYPEDEF = re.compile(
    rf"\btypedef\s+({_INTEGER_WORDS}(?:\s+{_INTEGER_WORDS})*)\s+(\w+)\s*;"
    rf"|\busing\s+(\w+)\s*=\s*({_INTEGER_WORDS}(?:\s+{_INTEGER_WORDS})*)\s*;"
)
# The host's own fixed-width names (x86-64 and aarch64 Linux): (bytes, signed).
_STANDARD_WIDTHS = {
    "int8_t": (1, True),
    "uint8_t": (1, False),
    "int16_t": (2, True),
    "uint16_t": (2, False),
    "int32_t": (4, True),
    "uint32_t": (4, False),
    "int64_t": (8, True),
    "uint64_t": (8, False),
    "intptr_t": (8, True),
    "uintptr_t": (8, False),
    "ptrdiff_t": (8, True),
    "size_t": (8, False),
}


def _integer_width(words: str) -> tuple[int, bool] | None:
    """(bytes, signed) of an integer type spelled in words (``unsigned long long int``)."""
    parts = words.split()
    signed = "unsigned" not in parts
    longs = parts.count("long")
    if "char" in parts:
        return (1, signed) if longs == 0 and "short" not in parts else None
    if "short" in parts:
        return (2, signed) if longs == 0 else None
    return ({0: 4, 1: 8, 2: 8}.get(longs, 0), signed) if longs <= 2 else None


def _drop_standard_typedefs(source: str) -> str:
    """The user's own typedefs of fixed-width names that the host's headers already declare
    alike (``typedef unsigned long long uint64_t;``, common in NVRTC kernels, which have no
    <cstdint>): blanked, since C++ refuses a second typedef of another spelling of the same
    width. A typedef that would change a width is left for the compiler to refuse."""
    code = _mask_comments_and_literals(source)
    spans = []
    for match in _STANDARD_TYPEDEF.finditer(code):
        words, name = (match.group(1), match.group(2)) if match.group(1) else match.group(4, 3)
        if name in _STANDARD_WIDTHS and _integer_width(words) == _STANDARD_WIDTHS[name]:
            spans.append(match.span())
    for start, end in reversed(spans):
        source = source[:start] + _blank(source[start:end]) + source[end:]
    return source


def _translate(source: str, preprocessed: str) -> _Translation:
    """Readies ``source`` for g++, deciding from ``preprocessed`` (the preprocessor's output for
    it, so that macros, user headers and ``#if`` are accounted for) what the launchers need.

    A module that mentions a barrier anywhere runs every kernel with one: deciding per kernel
    would mean following calls through functions, templates and lambdas.
    """
    code = _user_code(preprocessed)
    _refuse_unsupported(code)
    # The whole text for these two, so that nothing escapes them: a stray mention only costs speed.
    return _Translation(
        source=_rewrite_shared(_drop_standard_typedefs(source)),
        kernels=tuple(_find_kernels(code)),
        cooperative=bool(_SYNC.search(preprocessed)),
        shared_statics=bool(_SHARED.search(preprocessed)),
    )


def _generate(translation: _Translation) -> str:
    """The complete C++ translation unit: header, the user's source, one launcher per kernel."""
    cooperative = str(translation.cooperative).lower()
    shared_statics = str(translation.shared_statics).lower()
    exports = "".join(
        f"GPUPOOL_EMU_EXPORT(k{index}, {kernel}, {cooperative}, {shared_statics})\n"
        for index, kernel in enumerate(translation.kernels)
    )
    body = translation.source if translation.source.endswith("\n") else translation.source + "\n"
    return (
        f'#include "{HEADER.name}"\n#line 1 "{SOURCE_NAME}"\n{body}'
        f'#line 1 "<gpupool-launchers>"\n{exports}'
    )


# ---------------------------------------------------------------------------------------------
# Compiling.


def _option_value(options: list[str], index: int, short: str, long: str) -> tuple[str, int] | None:
    """The value of option ``short``/``long`` at ``index`` (attached, after '=', or the next
    word) and the index after it; None when the word is another option."""
    word = options[index]
    for prefix in (long + "=", short):
        if word.startswith(prefix) and len(word) > len(prefix):
            return word[len(prefix) :], index + 1
    if word in (short, long) and index + 1 < len(options):
        return options[index + 1], index + 2
    return None


# The NVRTC options that mean something to g++ too: (short form, long form).
_PASSED_OPTIONS = (("-D", "--define-macro"), ("-U", "--undefine-macro"), ("-I", "--include-path"))


def _compiler_flags(options: Sequence[str]) -> list[str]:
    """The g++ flags for NVRTC-style options: defines, undefines and include paths are
    honoured; everything else (-arch, -std, --use_fast_math, ...) means nothing on a CPU."""
    words = list(options)
    flags: list[str] = []
    index = 0
    while index < len(words):
        for short, long in _PASSED_OPTIONS:
            found = _option_value(words, index, short, long)
            if found:
                value, index = found
                flags.append(short + (os.path.abspath(value) if short == "-I" else value))
                break
        else:
            index += 1
    return flags


def _cache_dir() -> Path:
    root = os.environ.get("GPUPOOL_CACHE_DIR")
    base = Path(root).absolute() if root else Path.home() / ".cache" / "gpupool"
    directory = base / "emu-kernels"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _compiler() -> list[str]:
    """The C++ compiler's command words (``CXX`` overrides g++), its program resolved."""
    words = shlex.split(os.environ.get("CXX") or "g++")
    program = shutil.which(words[0]) if words else None
    if program is None:
        name = words[0] if words else "(empty CXX)"
        raise CompileError(
            "the CPU emulator needs a C++ compiler to run CUDA C kernels, and "
            f"'{name}' was not found (install g++ or set CXX)"
        )
    return [program, *words[1:]]


@functools.lru_cache(maxsize=8)
def _compiler_version(compiler: tuple[str, ...]) -> str:
    result = subprocess.run(
        [*compiler, "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    return result.stdout + result.stderr


class Cancellation:
    """Stops a compile that runs on another thread (the compile service's, for a worker that
    has hung up): its compiler is killed, and the compile raises CompileError."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._process is not None:
                _kill_group(self._process)

    def start(self, command: Sequence[str], cwd: Path) -> subprocess.Popen[str]:
        """The compiler, in a process group of its own: killing it kills cc1plus too."""
        with self._lock:
            if self.cancelled:
                raise CompileError("the compile was cancelled: its session has ended")
            self._process = _popen(command, cwd, own_group=True)
            return self._process


_compiling = threading.local()  # .cancellation: the Cancellation of this thread's compile


def _popen(command: Sequence[str], cwd: Path, own_group: bool = False) -> subprocess.Popen[str]:
    pipe = subprocess.PIPE
    return subprocess.Popen(
        command,
        stdin=pipe,
        stdout=pipe,
        stderr=pipe,
        text=True,
        cwd=cwd,
        start_new_session=own_group,
    )


def _kill_group(process: subprocess.Popen[str]) -> None:
    """Kill a compiler started in a group of its own, with the programs it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # it has ended


def _run_compiler(
    command: Sequence[str], source: str | None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Runs the compiler; the one place that does, so tests can count compilations."""
    cancellation: Cancellation | None = getattr(_compiling, "cancellation", None)
    process = cancellation.start(command, cwd) if cancellation else _popen(command, cwd)
    try:
        out, err = process.communicate(source, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        if cancellation is not None:
            _kill_group(process)
        else:
            process.kill()
        process.communicate()
        raise CompileError(f"the C++ compiler ran past {COMPILE_TIMEOUT_S} s") from error
    if cancellation is not None and cancellation.cancelled:
        raise CompileError("the compile was cancelled: its session has ended")
    return subprocess.CompletedProcess(list(command), process.returncode, out, err)


def _digest(*parts: str | bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


def _publish(
    command: list[str], source: str | None, target: Path
) -> subprocess.CompletedProcess[str]:
    """Compiles to a temporary name next to ``target`` and renames it into place on success,
    so that a concurrent reader sees the whole file or none."""
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".")
    os.close(descriptor)
    try:
        with tempfile.TemporaryDirectory(prefix="gpupool-cxx-") as empty:  # nothing to include
            result = _run_compiler([*command, "-o", temporary], source, Path(empty))
        if result.returncode == 0:
            os.chmod(temporary, 0o644)  # confined workers read the compile service's cache
            os.replace(temporary, target)
        return result
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _precompiled_header(compiler: list[str], version: str, cache: Path) -> Path | None:
    """A directory holding gpupool_emu.h precompiled, which more than halves compile times.
    g++ checks that it matches each compilation and quietly reads the header instead where it
    does not (an option such as -DNDEBUG changes the header), so it is only ever an
    optimisation; None if it cannot be built."""
    header = HEADER.read_bytes()
    directory = cache / f"pch-{_digest(*compiler, version, *CXX_FLAGS, header)[:24]}"
    target = directory / (HEADER.name + ".gch")
    if not target.exists():
        directory.mkdir(exist_ok=True)
        command = [*compiler, *CXX_FLAGS, "-x", "c++-header", str(HEADER)]
        if _publish(command, None, target).returncode != 0:
            return None
    return directory


def _emulator_files() -> list[bytes]:
    """The contents of the header and of the stub CUDA headers, for cache keys."""
    stubs = sorted(path for path in STUB_INCLUDE.rglob("*") if path.is_file())
    return [
        HEADER.read_bytes(),
        *(f"{p.relative_to(STUB_INCLUDE)}\0".encode() + p.read_bytes() for p in stubs),
    ]


def _preprocess(compiler: list[str], source: str, flags: Sequence[str]) -> str:
    """The preprocessor's output for ``source`` as the compilation will see it (same flags and
    include path, the header in its GPUPOOL_EMU_SCAN form): what the source scans read."""
    scanned = f'#include "{HEADER.name}"\n#line 1 "{SOURCE_NAME}"\n{source}'
    command = [
        *compiler,
        *CXX_FLAGS,
        "-E",
        "-DGPUPOOL_EMU_SCAN",
        *("-I", str(STUB_INCLUDE), "-I", str(HEADER.parent)),
        *flags,
        "-x",
        "c++",
        "-",
    ]
    with tempfile.TemporaryDirectory(prefix="gpupool-cpp-") as empty:
        result = _run_compiler(command, scanned, Path(empty))
    # Before any of the compiler's output goes back: its messages quote the files it read.
    given = [Path(os.path.realpath(flag[2:])) for flag in flags if flag.startswith("-I")]
    check_included(result.stdout, [*_include_roots(tuple(compiler)), *given])
    if result.returncode != 0:
        raise CompileError(
            f"{Path(compiler[0]).name} could not preprocess the CUDA C module for the CPU emulator",
            log=result.stderr,
        )
    return result.stdout


# The line marker of a file the preprocessor enters: `# 1 "name" 1` (flag 1), maybe with 3/4.
_ENTERED = re.compile(r'^# \d+ "((?:\\.|[^"\\])*)" 1(?: \d)*$', re.MULTILINE)


def check_included(preprocessed: str, roots: Sequence[Path]) -> None:
    """Refuse a module that made the preprocessor read a file outside ``roots``.

    The preprocessor names every file it enters in a line marker, however the directive was
    spelled (``%:include``, ``#/**/include``, a backslash-newline inside it, ``#import``, a
    macro, ``#include_next``), so this sees what a textual filter of the source cannot. A name
    is resolved (``..`` and symbolic links) before it is compared.
    """
    for match in _ENTERED.finditer(preprocessed):
        name = re.sub(r"\\(.)", r"\1", match.group(1))
        if name.startswith("<") and name.endswith(">"):  # <built-in>, <command-line>
            continue
        real = Path(os.path.realpath(name))
        if not any(real.is_relative_to(root) for root in roots):
            raise CompileError(
                f"#include of {name!r} refused: only the compiler's own and the emulator's"
                " headers can be included; put your header's text in the source"
            )


@functools.lru_cache(maxsize=8)
def _include_roots(compiler: tuple[str, ...]) -> tuple[Path, ...]:
    """The folders whose headers a module may include: the emulator's and the compiler's own
    system folders (as ``-v`` lists them), resolved."""
    result = subprocess.run(
        [*compiler, "-x", "c++", "-E", "-v", "-"],
        input="",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = result.stderr.splitlines()
    try:
        start = lines.index("#include <...> search starts here:") + 1
        end = lines.index("End of search list.", start)
    except ValueError:
        start = end = 0
    system = [line.strip() for line in lines[start:end]]
    folders = [STUB_INCLUDE, HEADER.parent, *(Path(folder) for folder in system)]
    return tuple(Path(os.path.realpath(folder)) for folder in folders)


def _build(
    compiler: list[str],
    translation: _Translation,
    flags: list[str],
    preprocessed: str,
) -> Path:
    """The shared library for ``translation``, compiled now or found in the cache. The
    preprocessed text is part of the cache key, so that a change to a user header is seen."""
    version = _compiler_version(tuple(compiler))
    generated = _generate(translation)
    cache = _cache_dir()
    key = _digest(
        generated,
        preprocessed,
        *CXX_FLAGS,
        *LINK_FLAGS,
        *flags,
        *compiler,
        version,
        *_emulator_files(),
    )
    target = cache / f"{key}.so"
    if target.exists():
        return target
    pch = _precompiled_header(compiler, version, cache)
    # The stubs come first, so that they stand in for the CUDA headers wherever included; a
    # precompiled header must come before the directory of the header it stands in for.
    includes = [
        "-I",
        str(STUB_INCLUDE),
        *(["-I", str(pch)] if pch else []),
        "-I",
        str(HEADER.parent),
    ]
    command = [*compiler, *CXX_FLAGS, *LINK_FLAGS, *includes, *flags, "-x", "c++", "-"]
    result = _publish(command, generated, target)
    if result.returncode != 0:
        names = ", ".join(translation.names) or "none found"
        raise CompileError(
            f"{Path(compiler[0]).name} could not compile the CUDA C module "
            f"(kernels: {names}) for the CPU emulator",
            log=result.stderr,
        )
    return target


@dataclass(frozen=True)
class Compiled:
    """A compiled module in the cache, and the names of its kernels in launcher order."""

    path: Path
    names: tuple[str, ...]


Compile = Callable[[str, Sequence[str]], Compiled]


def compile_module(
    source: str, options: Sequence[str] = (), cancellation: Cancellation | None = None
) -> Compiled:
    """Compiles CUDA C ``source`` into the cache (or finds it there); ``cancellation`` can
    stop it from another thread."""
    _compiling.cancellation = cancellation
    try:
        flags = _compiler_flags(options)
        compiler = _compiler()
        preprocessed = _preprocess(compiler, source, flags)
        translation = _translate(source, preprocessed)
        path = _build(compiler, translation, flags, preprocessed)
        return Compiled(path, tuple(translation.names))
    finally:
        _compiling.cancellation = None


_private_copies = itertools.count()


def _load_private_copy(path: Path) -> ctypes.CDLL:
    """Loads a copy of the cached library that is this module's alone.

    The dynamic loader hands out an already loaded library again (same file, or same name),
    whereas CUDA gives every module its own ``__device__`` variables. The copy is deleted as soon
    as it is loaded (the mapping outlives the name), so none is left behind even by a crash; the
    counter in its name keeps the loader from matching the name of an earlier, deleted copy.
    """
    prefix = f"{path.stem}.{next(_private_copies)}."
    descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=".so")  # ours, not the cache's
    os.close(descriptor)
    try:
        shutil.copyfile(path, name)
        return ctypes.CDLL(name)
    except OSError as error:
        raise CompileError(f"could not load the compiled CUDA C module {path}: {error}") from error
    finally:
        os.unlink(name)


# ---------------------------------------------------------------------------------------------
# Launching.


class PreparedLaunch:
    """One launch configuration of a kernel, launched with new argument bytes at each call.

    Each argument has its own zeroed, 16-byte aligned slot of at least its parameter's size,
    so the C++ side never reads past what Python owns: short arguments are zero-extended and
    long ones are read from their low (little-endian) bytes, as on a GPU. The slots, their
    pointers, the grid, the block and the error buffer are made once; a launch copies its
    arguments into the slots and calls the launcher. One thread at a time: the slots are
    shared by every call.
    """

    def __init__(
        self,
        function: EmuFunction,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        shared_mem: int,
        sizes: Sequence[int],
    ) -> None:
        self._function = function
        slots = [
            -(-max(size, param, 1) // _ARG_ALIGNMENT) * _ARG_ALIGNMENT
            for size, param in zip(sizes, function.arg_sizes, strict=True)
        ]
        self._storage = ctypes.create_string_buffer(sum(slots) + _ARG_ALIGNMENT)
        base = -ctypes.addressof(self._storage) % _ARG_ALIGNMENT
        memory = memoryview(self._storage).cast("B")
        self._pointers = (ctypes.c_void_p * max(len(sizes), 1))()
        self._copies: list[tuple[memoryview, slice]] = []
        slot_start, source = base, 0
        for index, (size, slot) in enumerate(zip(sizes, slots, strict=True)):
            self._pointers[index] = ctypes.addressof(self._storage) + slot_start
            target = memory[slot_start : slot_start + size]
            self._copies.append((target, slice(source, source + size)))
            slot_start += slot
            source += size
        self._arguments = (
            (ctypes.c_uint * 3)(*grid),
            (ctypes.c_uint * 3)(*block),
            shared_mem,
            self._pointers,
        )
        self._error = ctypes.create_string_buffer(_ERROR_BUFFER_SIZE)

    def __call__(self, data: bytes) -> None:
        """Runs the kernel to completion on ``data``, the arguments' bytes back to back."""
        for target, source in self._copies:
            target[:] = data[source]
        status = self._function.launcher(*self._arguments, self._error, _ERROR_BUFFER_SIZE)
        if status:
            detail = self._error.value.decode(errors="replace")
            raise CUDARuntimeError(
                _ERROR_NAMES.get(status, "cudaErrorUnknown"),
                f"kernel '{self._function.name}': {detail}",
            )


class EmuFunction:
    """One kernel of an EmuModule, launched on the calling thread (with the GIL released)."""

    def __init__(self, name: str, library: ctypes.CDLL, index: int) -> None:
        self.name = name
        self.launcher = library[f"gpupool_launch_k{index}"]
        self.launcher.restype = ctypes.c_int
        self.launcher.argtypes = [
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        count = library[f"gpupool_num_args_k{index}"]
        count.restype = ctypes.c_int
        self.num_args: int = count()
        sizes = (ctypes.c_size_t * max(self.num_args, 1))()
        library[f"gpupool_arg_sizes_k{index}"](sizes)
        self.arg_sizes: tuple[int, ...] = tuple(sizes[: self.num_args])

    def prepare(
        self,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        shared_mem: int,
        sizes: Sequence[int],
    ) -> PreparedLaunch:
        """A launch in this configuration of arguments of ``sizes`` bytes, checked now."""
        check_launch(grid, block, shared_mem)
        if len(sizes) != self.num_args:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue",
                f"kernel '{self.name}' takes {self.num_args} arguments, got {len(sizes)}",
            )
        return PreparedLaunch(self, grid, block, shared_mem, sizes)

    def launch(
        self,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        shared_mem: int,
        args: Sequence[bytes],
    ) -> None:
        """Runs the kernel to completion; ``args`` are the raw bytes cuLaunchKernel would see."""
        self.prepare(grid, block, shared_mem, [len(arg) for arg in args])(b"".join(args))


class EmuModule:
    """A compiled CUDA C module: the emulator's counterpart of a CUmodule."""

    def __init__(self, library: ctypes.CDLL, kernel_names: Sequence[str]) -> None:
        self._functions = {
            name: EmuFunction(name, library, index) for index, name in enumerate(kernel_names)
        }
        self.kernel_names: tuple[str, ...] = tuple(kernel_names)

    @classmethod
    def from_source(
        cls, source: str, options: Sequence[str] = (), compile: Compile | None = None
    ) -> EmuModule:
        """Compiles CUDA C ``source`` (or takes it from the cache) with NVRTC-style options,
        here or with ``compile`` (a confined worker's compile service), and loads it.

        Raises CompileError with g++'s output as ``log`` when it does not compile, and without
        a log for constructs the emulator cannot run.
        """
        compiled = (compile or compile_module)(source, options)
        return cls(_load_private_copy(compiled.path), compiled.names)

    def get_function(self, name: str) -> EmuFunction:
        try:
            return self._functions[name]
        except KeyError:
            raise CUDARuntimeError(
                "cudaErrorSymbolNotFound", f"no kernel named '{name}' in the module"
            ) from None
