"""CUDA C kernels for the CPU emulator: compiled by the host C++ compiler, launched with ctypes.

In the emulator a device pointer is a host address of the worker process, so a kernel can run
as ordinary host code. The user's CUDA C source is compiled by g++ with ``gpupool_emu.h`` in
front (which turns CUDA's keywords, built-in variables, atomics and intrinsics into host C++)
and one generated launcher per kernel behind. Python never parses C++ types: the launchers
deduce each kernel's parameters from its function type and report their count and sizes.

Only a light, textual look at the source happens here: finding kernel names, refusing CUDA
constructs the emulator cannot run (warp-level operations, inline PTX, textures...), rewriting
``extern __shared__`` arrays onto the launch's dynamic shared memory, and deciding which
kernels need a barrier per block (the ones that reach ``__syncthreads``), because running a
block's threads as a plain loop is many times faster than one host thread per CUDA thread.

Compiled modules are cached by content hash and written atomically, because several worker
processes compile the same kernels at the same time.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpupool.errors import CUDA_ERROR_CODES, CompileError, CUDARuntimeError
from gpupool.server.backends.base import check_launch

HEADER = Path(__file__).with_name("gpupool_emu.h")
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
_DIRECTIVE = re.compile(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", re.MULTILINE)
_MACRO = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)((?:[^\n]*\\\n)*[^\n]*)", re.MULTILINE)
_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"\n]+)[>\"][^\n]*", re.MULTILINE)
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*\b")
_NAMESPACE_OPENER = re.compile(r"(?:\bnamespace\s*([\w:]*)|\bextern\s*\"[^\"]*\")\s*$")
_KERNEL = re.compile(
    r"\b__global__\s+(?:\w+(?:\s*\([^()]*\))?\s+)*?void\s+"
    r"(?:__launch_bounds__\s*\([^()]*\)\s*)?(\w+)\s*\("
)
_TEMPLATE = re.compile(r"\btemplate\b")
_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\s+([^;{}\[\]]*?)\b(\w+)\s*\[\s*\]\s*;")
_ALIGNMENT = re.compile(r"\b(?:__align__|alignas)\s*\([^()]*\)")
_SHARED = re.compile(r"\b__shared__\b")
_SYNC = re.compile(r"\b__syncthreads\w*\b")

# CUDA headers whose contents gpupool_emu.h provides (NVRTC has them built in, g++ does not);
# <assert.h> would bring back the C assert, which aborts the whole worker process.
_BUILTIN_HEADER = re.compile(
    r"(?:cuda|cuda_runtime|cuda_runtime_api|device_launch_parameters|cuda_fp16|vector_types"
    r"|vector_functions|device_functions|math_constants|math_functions|device_atomic_functions"
    r"|sm_\d+_atomic_functions|sm_\d+_intrinsics|assert|cassert)(?:\.h|\.hpp)?"
)

# Constructs with no meaning without real warps or GPU hardware: (pattern, what it is).
_UNSUPPORTED = (
    (r"\b__shfl\w*", "warp shuffle"),
    (r"\b(?:__ballot\w*|__any_sync|__all_sync|__uni_sync|__any|__all)\b", "warp vote"),
    (r"\b__match_(?:any|all)_sync\b", "warp match"),
    (r"\b__reduce_\w+_sync\b", "warp reduction"),
    (r"\b__activemask\b", "warp mask"),
    (r"\b__syncwarp\b", "warp synchronisation"),
    (r"\b(?:asm|__asm__|__asm)\b", "inline assembly"),
    (r"\b(?:tex[123]D\w*|texCubemap\w*|cudaTextureObject_t|texture(?=\s*<))", "texture"),
    (r"\b(?:surf[123]D\w*|surfCubemap\w*|cudaSurfaceObject_t|surface(?=\s*<))", "surface"),
    (r"\bcooperative_groups\b", "cooperative groups"),
    (r"\b__nanosleep\b", "sleep"),
    (r"\b(?:clock64|__globaltimer|clock(?=\s*\())", "GPU clock"),
    (r"\b(?:__nv_bfloat16\w*|cuda_bf16)", "bfloat16"),
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


def _function_name(code: str, brace: int) -> str | None:
    """The name of the function whose body opens at ``brace``, None for non-functions."""
    close = brace - 1
    while close >= 0 and code[close] not in ";{})":
        close -= 1
    if close < 0 or code[close] != ")":
        return None
    depth = 0
    for position in range(close, -1, -1):
        depth += {")": 1, "(": -1}.get(code[position], 0)
        if depth == 0:
            name = re.search(r"(\w+)\s*$", code[max(0, position - 200) : position])
            return name.group(1) if name else None
    return None


@dataclass(frozen=True)
class _Scanned:
    """A source as the scans see it: ``code`` has comments and literals blanked, ``plain`` also
    preprocessor directives (macro bodies would unbalance the braces), ``blocks`` its braces."""

    code: str
    plain: str
    blocks: list[_Block]


def _scan(source: str) -> _Scanned:
    code = _mask_comments_and_literals(source)
    plain = _DIRECTIVE.sub(lambda match: _blank(match.group()), code)
    return _Scanned(code, plain, _blocks(plain))


def _function_bodies(plain: str, blocks: Sequence[_Block]) -> Iterator[tuple[str, _Block]]:
    """(name, body) of every function not inside another one: at namespace scope or a member
    of a class. Relies on ``blocks`` being nested and sorted by start."""
    enclosing: list[tuple[_Block, bool]] = []  # (block, whether it is in or is a function)
    for block in blocks:
        while enclosing and enclosing[-1][0].end <= block.start:
            enclosing.pop()
        in_function = bool(enclosing) and enclosing[-1][1]
        name = None if block.namespace is not None else _function_name(plain, block.start)
        if name and not in_function:
            yield name, block
        enclosing.append((block, in_function or name is not None))


def _definitions(scanned: _Scanned) -> dict[str, set[str]]:
    """Identifiers used by each function and each macro, keyed by name."""
    uses: dict[str, set[str]] = {}
    for name, body in _function_bodies(scanned.plain, scanned.blocks):
        used = _IDENTIFIER.findall(scanned.plain, body.start, body.end)
        uses.setdefault(name, set()).update(used)
    for macro in _MACRO.finditer(scanned.code):
        uses.setdefault(macro.group(1), set()).update(_IDENTIFIER.findall(macro.group(2)))
    return uses


def _syncing_names(texts: Sequence[_Scanned]) -> set[str]:
    """Functions and macros that reach __syncthreads, directly or through each other."""
    uses: dict[str, set[str]] = {}
    for scanned in texts:
        for name, used in _definitions(scanned).items():
            uses.setdefault(name, set()).update(used)
    syncing = {name for name, used in uses.items() if any(_SYNC.match(u) for u in used)}
    grown = True
    while grown:
        more = {name for name, used in uses.items() if name not in syncing and used & syncing}
        syncing |= more
        grown = bool(more)
    # A kernel whose body was not found is assumed to synchronise: correct, only slower.
    return syncing | {m.group(1) for m in _KERNEL.finditer(texts[0].plain)} - set(uses)


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
class _Kernel:
    name: str
    qualified: str
    cooperative: bool


@dataclass(frozen=True)
class _Translation:
    """The user's source made ready for g++, and what the launchers need to know."""

    source: str
    kernels: tuple[_Kernel, ...]
    shared_statics: bool


def _find_kernels(plain: str, blocks: Sequence[_Block], syncing: set[str]) -> list[_Kernel]:
    """Non-template kernels at namespace scope; templates have no name to launch them by."""
    kernels: dict[str, _Kernel] = {}
    for match in _KERNEL.finditer(plain):
        statement_start = max(plain.rfind(c, 0, match.start()) for c in ";{}") + 1
        name = match.group(1)
        if _TEMPLATE.search(plain, statement_start, match.start()) or name in kernels:
            continue
        namespace = _namespace_at(blocks, match.start())
        qualified = f"{namespace}::{name}" if namespace else name
        kernels[name] = _Kernel(name, qualified, name in syncing)
    return list(kernels.values())


def _rewrite_extern_shared(source: str, plain: str) -> str:
    """Points every ``extern __shared__ T name[];`` at the launch's dynamic shared memory, as
    a reference to the header's pointer (read as a ``T*``, which -fno-strict-aliasing allows),
    so that the name works as the array did in every expression, at any scope."""
    pieces = []
    done = 0
    for match in _EXTERN_SHARED.finditer(plain):
        element = _ALIGNMENT.sub("", source[match.start(1) : match.end(1)]).strip()
        replacement = (
            f"{element}* const& {match.group(2)} = "
            f"reinterpret_cast<{element}* const&>(::gpupool_emu::g_dynamic_shared);"
        )
        pieces += [source[done : match.start()], replacement, "\n" * match.group().count("\n")]
        done = match.end()
    return "".join([*pieces, source[done:]])


def _drop_builtin_includes(source: str, code: str) -> str:
    """Blanks includes of the CUDA headers that gpupool_emu.h stands in for."""

    def drop(match: re.Match[str]) -> str:
        in_comment = code[match.start() + match.group().index("#")] != "#"
        if in_comment or not _BUILTIN_HEADER.fullmatch(match.group(1).strip()):
            return match.group()
        return ""

    return _INCLUDE.sub(drop, source)


def _translate(source: str, headers: Sequence[str] = ()) -> _Translation:
    """Readies ``source`` for g++; ``headers`` are the user headers it includes, which the
    decisions about barriers and shared memory must see too."""
    scanned = _scan(source)
    _refuse_unsupported(scanned.code)
    texts = [scanned, *map(_scan, headers)]
    syncing = _syncing_names(texts) if any(_SYNC.search(t.code) for t in texts) else set()
    kernels = _find_kernels(scanned.plain, scanned.blocks, syncing)
    rewritten = _rewrite_extern_shared(source, scanned.plain)
    rewritten = _drop_builtin_includes(rewritten, _mask_comments_and_literals(rewritten))
    shared_statics = any(_SHARED.search(t.code) for t in texts)  # macros included
    return _Translation(rewritten, tuple(kernels), shared_statics)


def _user_headers(source: str, include_dirs: Sequence[str]) -> list[str]:
    """The text of every header that ``source`` includes from the -I directories (or next to
    another such header), recursively."""
    found: dict[Path, str] = {}
    pending: list[tuple[str, Sequence[str]]] = [(source, include_dirs)]
    while pending:
        text, directories = pending.pop()
        for include in _INCLUDE.finditer(text):
            paths = (Path(directory, include.group(1).strip()) for directory in directories)
            path = next((p.resolve() for p in paths if p.is_file()), None)
            if path is not None and path not in found:
                found[path] = path.read_text(errors="replace")
                pending.append((found[path], [str(path.parent), *include_dirs]))
    return list(found.values())


def _generate(translation: _Translation) -> str:
    """The complete C++ translation unit: header, the user's source, one launcher per kernel."""
    exports = "".join(
        f"GPUPOOL_EMU_EXPORT(k{index}, {kernel.qualified}, "
        f"{str(kernel.cooperative).lower()}, {str(translation.shared_statics).lower()})\n"
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


def _defines_as_source(flags: Sequence[str]) -> str:
    """The -D flags as #define lines, for the source scans (a macro may hide a barrier)."""
    defines = (flag[2:].replace("=", " ", 1) for flag in flags if flag.startswith("-D"))
    return "".join(f"#define {define}\n" for define in defines)


def _cache_dir() -> Path:
    root = os.environ.get("GPUPOOL_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "gpupool"
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


def _run_compiler(
    command: Sequence[str], source: str | None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Runs the compiler; the one place that does, so tests can count compilations."""
    try:
        return subprocess.run(
            command,
            input=source,
            capture_output=True,
            text=True,
            cwd=cwd,
            check=False,
            timeout=COMPILE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        raise CompileError(f"the C++ compiler ran past {COMPILE_TIMEOUT_S} s") from error


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
        result = _run_compiler([*command, "-o", temporary], source, target.parent)
        if result.returncode == 0:
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


def _build(
    generated: str, flags: list[str], headers: Sequence[str], kernel_names: Iterable[str]
) -> Path:
    """The shared library for ``generated``, compiled now or found in the cache; the user's
    ``headers`` are part of the cache key, so that editing one is seen."""
    compiler = _compiler()
    version = _compiler_version(tuple(compiler))
    cache = _cache_dir()
    key = _digest(
        generated,
        *CXX_FLAGS,
        *LINK_FLAGS,
        *flags,
        *compiler,
        version,
        HEADER.read_bytes(),
        *headers,
    )
    target = cache / f"{key}.so"
    if target.exists():
        return target
    pch = _precompiled_header(compiler, version, cache)
    includes = ["-I", str(pch)] if pch else []
    command = [
        *compiler,
        *CXX_FLAGS,
        *LINK_FLAGS,
        *includes,
        "-I",
        str(HEADER.parent),
        *flags,
        "-x",
        "c++",
        "-",
    ]
    result = _publish(command, generated, target)
    if result.returncode != 0:
        names = ", ".join(kernel_names) or "none found"
        raise CompileError(
            f"{Path(compiler[0]).name} could not compile the CUDA C module "
            f"(kernels: {names}) for the CPU emulator",
            log=result.stderr,
        )
    return target


# ---------------------------------------------------------------------------------------------
# Launching.


def _pack_arguments(
    args: Sequence[bytes], sizes: Sequence[int]
) -> tuple[ctypes.Array[ctypes.c_char], ctypes.Array[ctypes.c_void_p]]:
    """Copies each argument into its own zeroed, 16-byte aligned slot of at least its
    parameter's size, so the C++ side never reads past what Python owns: short arguments are
    zero-extended and long ones are read from their low (little-endian) bytes, as on a GPU."""
    slots = [
        -(-max(len(arg), size, 1) // _ARG_ALIGNMENT) * _ARG_ALIGNMENT
        for arg, size in zip(args, sizes, strict=True)
    ]
    storage = ctypes.create_string_buffer(sum(slots) + _ARG_ALIGNMENT)
    address = -(-ctypes.addressof(storage) // _ARG_ALIGNMENT) * _ARG_ALIGNMENT
    pointers = (ctypes.c_void_p * max(len(args), 1))()
    for index, (arg, slot) in enumerate(zip(args, slots, strict=True)):
        data = bytes(arg)
        ctypes.memmove(address, data, len(data))
        pointers[index] = address
        address += slot
    return storage, pointers


class EmuFunction:
    """One kernel of an EmuModule, launched on the calling thread (with the GIL released)."""

    def __init__(self, name: str, library: ctypes.CDLL, index: int) -> None:
        self.name = name
        self._launch = library[f"gpupool_launch_k{index}"]
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [
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

    def launch(
        self,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        shared_mem: int,
        args: Sequence[bytes],
    ) -> None:
        """Runs the kernel to completion; ``args`` are the raw bytes cuLaunchKernel would see."""
        check_launch(grid, block, shared_mem)
        if len(args) != self.num_args:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue",
                f"kernel '{self.name}' takes {self.num_args} arguments, got {len(args)}",
            )
        _storage, pointers = _pack_arguments(args, self.arg_sizes)  # _storage: alive till return
        error = ctypes.create_string_buffer(_ERROR_BUFFER_SIZE)
        status = self._launch(
            (ctypes.c_uint * 3)(*grid),
            (ctypes.c_uint * 3)(*block),
            shared_mem,
            pointers,
            error,
            len(error),
        )
        if status:
            detail = error.value.decode(errors="replace")
            raise CUDARuntimeError(
                _ERROR_NAMES.get(status, "cudaErrorUnknown"), f"kernel '{self.name}': {detail}"
            )


class EmuModule:
    """A compiled CUDA C module: the emulator's counterpart of a CUmodule."""

    def __init__(self, library: ctypes.CDLL, kernel_names: Sequence[str]) -> None:
        self._functions = {
            name: EmuFunction(name, library, index) for index, name in enumerate(kernel_names)
        }
        self.kernel_names: tuple[str, ...] = tuple(kernel_names)

    @classmethod
    def from_source(cls, source: str, options: Sequence[str] = ()) -> EmuModule:
        """Compiles CUDA C ``source`` (or takes it from the cache) with NVRTC-style options.

        Raises CompileError with g++'s output as ``log`` when it does not compile, and without
        a log for constructs the emulator cannot run.
        """
        flags = _compiler_flags(options)
        headers = _user_headers(source, [flag[2:] for flag in flags if flag.startswith("-I")])
        translation = _translate(source, [*headers, _defines_as_source(flags)])
        names = [kernel.name for kernel in translation.kernels]
        path = _build(_generate(translation), flags, headers, names)
        try:
            library = ctypes.CDLL(str(path))
        except OSError as error:
            raise CompileError(
                f"could not load the compiled CUDA C module {path}: {error}"
            ) from error
        return cls(library, names)

    def get_function(self, name: str) -> EmuFunction:
        try:
            return self._functions[name]
        except KeyError:
            raise CUDARuntimeError(
                "cudaErrorSymbolNotFound", f"no kernel named '{name}' in the module"
            ) from None
