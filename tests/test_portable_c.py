"""The C engine stays buildable by MSVC (issue 21).

GCC's and clang's extensions, POSIX threads and C11 atomics (experimental in MSVC) appear only in
the files that give the rest of csrc/ a portable form of them, behind a test for the compiler or
system that has them: csrc/compiler.h, csrc/platform_threads.h, and the POSIX side of the platform
files. Checked here:

- no other file of csrc/ names them (comments aside);
- every engine source compiles as ISO C11 without variable-length arrays (gcc -std=c11
  -pedantic-errors -Wvla, which also refuses statement expressions, case ranges, zero-length
  arrays and `typeof`), once as built and once with RWKV_NO_GNU_EXTENSIONS, which makes
  compiler.h take its portable forms; the Windows sources likewise with MinGW-w64 when installed;
- compiler.h's portable overflow checks give the builtins' answers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

pytestmark = pytest.mark.skipif(not CSRC.is_dir(), reason="needs the source tree")

# What MSVC lacks: GCC and clang language extensions, and C11 atomics.
GNU_ONLY = re.compile(r"__builtin_\w+|__attribute__|__asm__|\basm\b|__extension__|__typeof__|\btypeof\b|"
                      r"__restrict__|__thread\b|__sync_\w+|__atomic_\w+|#\s*pragma\s+GCC|stdatomic")
# POSIX interfaces that Windows lacks.
POSIX_ONLY = re.compile(r"\bpthread\w*|\bssize_t\b|<(unistd|sched|cpuid|dirent|strings)\.h>|<sys/(mman|time)\.h>")

# The files where those have their place, each behind its test for the compiler or system.
EXTENSIONS_ALLOWED = {"compiler.h", "platform_threads.h"}
POSIX_ALLOWED = EXTENSIONS_ALLOWED | {"platform.h", "output.c"}  # output.c: output_win32.c's POSIX twin
# rwkv.cpp's public header is installed alone, so it cannot take its export attribute from
# compiler.h; it tests for _WIN32 and __GNUC__ itself.
PUBLIC_HEADER = "librwkv/include/rwkv.h"

WINDOWS_SOURCES = {"platform_win32.c", "output_win32.c"}
POSIX_SOURCES = {"output.c"}


def _without_comments(text: str) -> str:
    """The C text with comments blanked out, line numbers kept (string and character literals are
    matched only so that a comment marker inside one is not taken for a comment)."""
    def blank(match: re.Match) -> str:
        return re.sub(r"[^\n]", " ", match.group(0)) if match.group(0).startswith("/") else match.group(0)
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', blank, text, flags=re.S)


def _findings(path: Path) -> list[str]:
    name = path.relative_to(CSRC).as_posix()
    if name == PUBLIC_HEADER:
        return []
    rules = [] if name in EXTENSIONS_ALLOWED else [GNU_ONLY]
    if name not in POSIX_ALLOWED:
        rules.append(POSIX_ONLY)
    found = []
    for number, line in enumerate(_without_comments(path.read_text()).splitlines(), 1):
        found += [f"csrc/{name}:{number}: {m.group(0)}" for rule in rules for m in rule.finditer(line)]
    return found


def test_no_gnu_or_posix_only_constructs_outside_the_portability_files():
    files = sorted(p for p in CSRC.rglob("*") if p.suffix in (".c", ".h"))
    assert len(files) > 30
    findings = [f for path in files for f in _findings(path)]
    assert not findings, "use compiler.h or platform_threads.h instead:\n" + "\n".join(findings)


def _engine_sources(windows: bool) -> list[Path]:
    sources = sorted(CSRC.glob("*.c")) + sorted(CSRC.glob("arch/*.c")) + [CSRC / "librwkv" / "librwkv.c"]
    left_out = POSIX_SOURCES if windows else WINDOWS_SOURCES
    return [s for s in sources if s.name not in left_out]


# gcc as CMakeLists.txt compiles the engine (rwkv_settings), in ISO C11 with warnings as errors.
STRICT = ["-std=c11", "-pedantic-errors", "-Wvla", "-Werror", "-Wall", "-Wextra", "-fopenmp-simd", "-fsyntax-only",
          "-D_GNU_SOURCE", "-DRWKV_BUILD", f"-I{CSRC}"]
COMPILERS = {"native": ("gcc", []),
             "mingw": ("x86_64-w64-mingw32-gcc-posix", ["-D_FILE_OFFSET_BITS=64", "-D__USE_MINGW_ANSI_STDIO=1"])}


@pytest.mark.parametrize("portable_forms", [False, True], ids=["as-built", "no-gnu-extensions"])
@pytest.mark.parametrize("target", COMPILERS)
def test_sources_compile_as_iso_c11(target, portable_forms):
    compiler, flags = COMPILERS[target]
    cc = shutil.which(compiler)
    if cc is None:
        pytest.skip(f"{compiler} is not installed")
    flags = STRICT + flags + (["-DRWKV_NO_GNU_EXTENSIONS"] if portable_forms else [])

    def compile_one(source: Path) -> str:
        done = subprocess.run([cc, *flags, str(source)], capture_output=True, text=True, timeout=300)
        return "" if done.returncode == 0 else done.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        errors = [e for e in pool.map(compile_one, _engine_sources(windows=target == "mingw")) if e]
    assert not errors, "\n".join(errors)[-6000:]


OVERFLOW_CHECK = r"""
#include <stdint.h>
#include <stdio.h>
#include "compiler.h"

int main(void) {
    const size_t values[] = {0, 1, 2, 3, 0xffff, (size_t)1 << 32, SIZE_MAX / 3, SIZE_MAX / 2, SIZE_MAX / 2 + 1,
                             SIZE_MAX - 1, SIZE_MAX};
    const int n = (int)(sizeof values / sizeof values[0]);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            size_t product, sum;
            const int mul = rwkv_mul_overflow(values[i], values[j], &product);
            const int add = rwkv_add_overflow(values[i], values[j], &sum);
            printf("%d %zx %d %zx\n", mul, product, add, sum);
        }
    return 0;
}
"""


def test_portable_overflow_checks_agree_with_the_builtins(tmp_path):
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "overflow.c"
    source.write_text(OVERFLOW_CHECK)
    results = []
    for name, define in (("builtins", []), ("portable", ["-DRWKV_NO_GNU_EXTENSIONS"])):
        exe = tmp_path / name
        subprocess.run([cc, "-std=c11", "-O1", f"-I{CSRC}", *define, str(source), "-o", str(exe)], check=True)
        results.append(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout)
    assert results[0] == results[1]
    assert results[0].count("\n1 ") > 10  # overflows were among the cases
