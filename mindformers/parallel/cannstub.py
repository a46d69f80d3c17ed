"""Stub CANN libraries, so MindSpore's Ascend plugin loads on a machine without an NPU, for dry-run compiles.

The MindSpore wheel carries its Ascend plugin, but the plugin opens CANN's shared libraries
(``libascendcl.so``, ``libge_runner.so``, ``libhccl.so``, ...) when ``device_target="Ascend"`` is set. A dry
run (``MS_SIMULATION_LEVEL=0``) only compiles graphs, so it never calls into CANN for real; it just needs
the symbols to resolve. This module builds, with gcc, one library that defines every C symbol the installed
plugin needs from CANN and installs it under each CANN library name. Nothing from CANN is copied or
downloaded; the symbol names come from the wheel itself (``nm -D``, ``readelf --dyn-syms``, and the names
the plugin looks up with ``dlsym``).

- every function returns 0 (CANN's success code); ``acl*Create*`` functions, which return handles, return
  zeroed memory;
- ``ge::StatusFactory::Instance()`` is a real singleton (static initialisers of the plugin write to it);
- data symbols are zeroed 4 KB blocks;
- a Python package ``hccl`` with ``sys_version.__sys_version__`` satisfies
  ``mindspore.communication.init()``'s version check.

WARNING: only compilation works on top of these stubs. ``MS_SIMULATION_LEVEL=1`` (kernel build, memory
estimate) and anything that runs a kernel crash.

The result is cached per MindSpore version (``~/.cache/mindformers/cannstub/<version>``; ``$XDG_CACHE_HOME`` is
honoured); a build takes ~15 s.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from typing import Dict, List, Set

# every CANN library name the Ascend plugin of MindSpore 2.10 opens
CANN_LIBRARIES = (
    "libacl_op_compiler.so", "libacl_tdt_channel.so", "libacl_dvpp.so", "libacl_dvpp_mpi.so", "libacl_dvpp_op.so",
    "libascend_hal.so", "libascendalog.so", "libascendcl.so", "libatb.so", "libc_sec.so", "libexe_graph.so",
    "libge_runner.so", "libgraph.so", "libhccl.so", "libmmpa.so", "libmsprofiler.so", "libnnopbase.so",
    "libopapi.so", "libplatform.so", "libprofapi.so", "libregister.so", "libruntime.so",
)
# system libraries whose symbols need no stub
_SYSTEM_LIBRARIES = ("libstdc++.so.6", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2",
                     "librt.so.1", "libgomp.so.1")
_SYSTEM_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64")
# names the plugin resolves with dlsym at run time
_DLSYM_NAME = re.compile(rb"(?<![A-Za-z0-9_])(?:acl|rt|Hccl|hccl|aclnn|aclrt|acltdt|aclmdl|aclprof|aclop|Mstx|mstx|"
                         rb"Msprof|msprof|prof|dcmi|drv|hal|atb)[A-Za-z0-9_]*(?![A-Za-z0-9_])")
_HANDLE_CREATORS = re.compile(r"^(aclCreate|aclopCreate|aclmdlCreate|acltdtCreate|aclprofCreate|acldvppCreate|"
                              r"aclvdecCreate|aclrtAllocatorCreateDesc)")
_STATUS_FACTORY = "_ZN2ge13StatusFactory8InstanceEv"
_STATUS_FACTORY_SOURCE = """
#include <cstdint>
#include <map>
#include <string>
namespace ge {
class StatusFactory {
 public:
  static StatusFactory *Instance();
  std::map<uint32_t, std::string> err_desc_;  // the layout the plugin's inline RegisterErrorNo() writes to
};
StatusFactory *StatusFactory::Instance() { static StatusFactory factory; return &factory; }
}  // namespace ge
"""
TOOLS = ("gcc", "g++", "nm", "readelf")


def cache_dir() -> str:
    """Where the stubs of the installed MindSpore version live."""
    import mindspore

    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mindformers", "cannstub", mindspore.__version__)


def missing_tools() -> List[str]:
    """The build tools (gcc, g++, nm, readelf) not found on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def ensure_stubs(directory: str = None) -> Dict[str, str]:
    """Build the stubs once (cached) and return the environment variables that load them.

    Returns:
        ``{"LD_LIBRARY_PATH": <dir>/lib64, "PYTHONPATH": <dir>/py}`` (to prepend to the existing values).
    Raises:
        RuntimeError naming the missing tool, or the failing build step and its output.
    """
    directory = directory or cache_dir()
    lib, py = os.path.join(directory, "lib64"), os.path.join(directory, "py")
    done = os.path.join(directory, "complete")
    if not os.path.exists(done):
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"building the stub CANN libraries for a dry run needs {', '.join(TOOLS)}; not found "
                               f"on PATH: {', '.join(missing)} (install gcc, g++ and binutils)")
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(directory))
        try:
            _build(staging)
            if os.path.exists(directory):  # a half-built leftover, or another process finished first
                if os.path.exists(done):
                    shutil.rmtree(staging)
                    return {"LD_LIBRARY_PATH": lib, "PYTHONPATH": py}
                shutil.rmtree(directory)
            os.replace(staging, directory)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging)
    return {"LD_LIBRARY_PATH": lib, "PYTHONPATH": py}


def _run(args: List[str], **kwargs) -> str:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode:
        raise RuntimeError(f"building the stub CANN libraries: `{' '.join(args)}` failed (exit {result.returncode}): "
                           f"{result.stderr.strip()[-2000:]}")
    return result.stdout


def _mindspore_dir() -> str:
    import importlib.util

    return os.path.dirname(importlib.util.find_spec("mindspore").origin)


def _shared_objects(root: str) -> List[str]:
    out = []
    for folder, _, files in os.walk(root):
        out += [os.path.join(folder, f) for f in files if ".so" in f and os.path.isfile(os.path.join(folder, f))]
    return sorted(out)


def _defined_symbols(files: List[str]) -> Set[str]:
    names = set()
    for path in files:
        result = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True)
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                names.add(parts[2].split("@")[0])
    return names


def _undefined_symbols(files: List[str]) -> Dict[str, Set[str]]:
    """name -> symbol types (FUNC, OBJECT, TLS, NOTYPE) of the non-weak undefined symbols of ``files``."""
    types: Dict[str, Set[str]] = defaultdict(set)
    for path in files:
        result = subprocess.run(["readelf", "-W", "--dyn-syms", path], capture_output=True, text=True)
        for line in result.stdout.splitlines():
            parts = line.split()
            # Num: Value Size Type Bind Vis Ndx Name
            if len(parts) >= 8 and parts[6] == "UND" and parts[4] != "WEAK":
                types[parts[7].split("@")[0]].add(parts[3])
    return types


def _build(out: str) -> None:
    ms_dir = _mindspore_dir()
    plugin = os.path.join(ms_dir, "lib", "plugin")
    if not os.path.isdir(os.path.join(plugin, "ascend")):
        raise RuntimeError(f"this MindSpore wheel has no Ascend plugin ({plugin}/ascend is missing); the dry run "
                           "needs the unified wheel from PyPI")
    ascend = [f for f in _shared_objects(plugin) if "gpu" not in os.path.relpath(f, plugin)]
    system = [os.path.join(d, n) for n in _SYSTEM_LIBRARIES for d in _SYSTEM_DIRS if os.path.exists(os.path.join(d, n))]
    defined = _defined_symbols(_shared_objects(ms_dir) + system)
    undefined = _undefined_symbols(ascend)
    names = {n for n in undefined if n not in defined and not n.lstrip("_").startswith("Py")}
    for path in [os.path.join(plugin, "libmindspore_ascend.so.2"), os.path.join(plugin, "libmindspore_ops_ascend.so")] + \
            [f for f in ascend if os.path.dirname(f) == os.path.join(plugin, "ascend")]:
        if os.path.exists(path):
            with open(path, "rb") as f:
                names |= {m.decode() for m in _DLSYM_NAME.findall(f.read())} - defined
    handles = sorted(n for n in names if _HANDLE_CREATORS.match(n))
    plain = sorted(names - set(handles) - {_STATUS_FACTORY})

    work = tempfile.mkdtemp(prefix="cannstub-")
    try:
        asm = [".text"]
        for name in plain:
            if not undefined.get(name, set()) & {"OBJECT", "TLS"}:
                asm += [f".globl {name}", f".type {name}, @function", f"{name}:", "  xorl %eax, %eax", "  ret"]
        asm.append(".data")
        for name in plain:
            if "OBJECT" in undefined.get(name, ()):
                asm += [f".globl {name}", f".type {name}, @object", f".size {name}, 4096", ".align 16", f"{name}:",
                        "  .zero 4096"]
        asm.append('.section .note.GNU-stack,"",@progbits')
        with open(os.path.join(work, "stub.S"), "w") as f:
            f.write("\n".join(asm) + "\n")
        with open(os.path.join(work, "handles.c"), "w") as f:
            f.write("#include <stdlib.h>\n" + "".join(f"void *{n}(void) {{ return calloc(1, 4096); }}\n" for n in handles))
        with open(os.path.join(work, "status_factory.cc"), "w") as f:
            f.write(_STATUS_FACTORY_SOURCE)
        _run(["gcc", "-O1", "-fPIC", "-c", "handles.c", "-o", "handles.o"], cwd=work)
        _run(["g++", "-O1", "-fPIC", "-shared", "-o", "libcannstub.so", "stub.S", "status_factory.cc", "handles.o"],
             cwd=work)
        lib = os.path.join(out, "lib64")
        os.makedirs(lib)
        for name in CANN_LIBRARIES:
            shutil.copyfile(os.path.join(work, "libcannstub.so"), os.path.join(lib, name))
    finally:
        shutil.rmtree(work)
    hccl = os.path.join(out, "py", "hccl")
    os.makedirs(hccl)
    open(os.path.join(hccl, "__init__.py"), "w").close()
    with open(os.path.join(hccl, "sys_version.py"), "w") as f:
        f.write('__sys_version__ = "8.1.RC1"\n')
    with open(os.path.join(out, "complete"), "w") as f:
        f.write(f"{len(plain) + len(handles) + 1} stubbed symbols, built by {sys.executable}\n")
