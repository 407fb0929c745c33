"""What a module's source and options may make the compiler read: nothing of the daemon's.

The compiler runs on the daemon, and its error log goes back to the client, so an
``#include "/etc/passwd"`` would print the daemon's files, and NVRTC options such as
``--pre-include``, ``--time`` or ``--use-pch`` name files to read or write. Every ModuleLoad
is checked here, on a GPU daemon and on the emulator (by the session's executor, and again by
the emulator's compile service, which a confined worker can reach directly); the emulator
also checks what its preprocessor actually read (``emu_kernels.check_included``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpupool.errors import CompileError

# Directives that read a file: #include, #include_next, #import; #embed (and __has_embed) are
# refused whatever they name, as binary data has no place in a kernel's source.
_READS_FILE = re.compile(r"^[ \t]*#[ \t]*(?:include(?:_next)?|import)\b(.*)$", re.MULTILINE)
_EMBEDS = re.compile(r"^[ \t]*#[ \t]*embed\b|\b__has_embed\b", re.MULTILINE)
_HEADER_NAME = re.compile(r"\s*[<\"]([^>\"\n]*)[>\"]")
_SPLICE = re.compile(r"\\[ \t]*\r?\n")  # g++ also splices a backslash and blanks, then newline
_COMMENT_OR_STRING = re.compile(r"/\*.*?(?:\*/|$)|//[^\n]*|\"(?:\\.|[^\"\\\n])*\"", re.DOTALL)
# NVRTC options, by name (what precedes '='), that read or write no file: -I, --pre-include,
# --time, --fdevice-time-trace, --create-pch/--use-pch and --pch-dir are not among them.
_OPTIONS = frozenset(
    {
        "-arch", "--gpu-architecture", "-std", "--std", "-dc", "--device-c", "-dw",
        "--device-w", "-rdc", "--relocatable-device-code", "-ewp",
        "--extensible-whole-program", "-G", "--device-debug", "-lineinfo",
        "--generate-line-info", "-dopt", "--dopt", "--maxrregcount", "-maxrregcount", "--ftz",
        "-ftz", "--prec-sqrt", "-prec-sqrt", "--prec-div", "-prec-div", "--fmad", "-fmad",
        "--use_fast_math", "-use_fast_math", "--extra-device-vectorization",
        "-extra-device-vectorization", "--modify-stack-limit", "-modify-stack-limit",
        "-dlto", "--dlink-time-opt", "--no-source-include", "-no-source-include",
        "--builtin-move-forward", "--builtin-initializer-list", "-w", "--disable-warnings",
        "-restrict", "--restrict", "-default-device", "--device-as-default-execution-space",
        "--device-int128", "-device-int128", "--display-error-number",
        "--no-display-error-number", "--diag-error", "--diag-suppress", "--diag-warn",
        "-diag-error", "-diag-suppress", "-diag-warn", "--brief-diagnostics", "-brief-diag",
        "-Werror", "--Werror", "--split-compile", "-split-compile", "--minimal", "-minimal",
        "--fdevice-syntax-only", "-fdevice-syntax-only", "--optimization-info", "-opt-info",
        "--device-stack-protector", "-device-stack-protector", "--jump-table-density",
        "-jtd", "--gen-opt-lto", "-gen-opt-lto",
    }
)  # fmt: skip
_MACRO_OPTIONS = ("-D", "-U", "--define-macro", "--undefine-macro")


def _directives_text(source: str) -> str:
    """``source`` as the preprocessor reads its directives: trigraph ``??=`` and digraph
    ``%:`` as ``#``, backslash-newlines spliced, comments a space (string literals kept, so
    that a ``/*`` inside one starts nothing). Errs towards finding more directives."""
    text = _SPLICE.sub("", source.replace("??=", "#"))
    text = _COMMENT_OR_STRING.sub(lambda m: m.group() if m.group()[0] == '"' else " ", text)
    return text.replace("%:", "#")


def check_options(options: Sequence[str]) -> None:
    """Refuse compile options that would name the daemon's files or that NVRTC does not take:
    only the options of ``_OPTIONS`` and macro definitions (``-DNAME``, ``-D NAME``)."""
    words = iter(options)
    for option in words:
        if option in _MACRO_OPTIONS:
            next(words, None)  # its value
        elif not option.startswith(_MACRO_OPTIONS) and option.split("=")[0] not in _OPTIONS:
            raise CompileError(
                f"option {option!r} refused: the daemon takes NVRTC's options that name no"
                " file (-arch, -std, -D, -U, --use_fast_math, ...), not include paths"
            )


def check_includes(source: str, options: Sequence[str]) -> None:
    """Refuse includes that reach outside the compiler's own headers.

    The compiler runs on the daemon, and its error log goes back to the client: an
    ``#include "/etc/passwd"`` would print the daemon's files. Only relative header names
    without ``..`` are allowed, and no include directories. This reads the source as the
    preprocessor reads directives (digraphs, comments, spliced lines); the emulator also checks
    what its preprocessor actually read (``emu_kernels.check_included``).
    """
    check_options(options)
    text = _directives_text(source)
    embed = _EMBEDS.search(text)
    if embed:
        raise CompileError(f"{embed.group().strip()} refused: a module cannot embed files")
    for match in _READS_FILE.finditer(text):
        literal = _HEADER_NAME.match(match.group(1))
        path = literal.group(1) if literal else "/"  # a computed include could name anything
        if path.startswith("/") or ".." in path.split("/"):
            raise CompileError(
                f"{match.group().strip()[:80]} refused: only the compiler's own headers can be"
                " included; put your header's text in the source"
            )
