"""The doctor's environment report: versions, devices, which kernel serves each op and why."""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

import torch


# ---------------------------------------------------------------------------
# versions, devices
# ---------------------------------------------------------------------------

def _module_version(name: str, dist: Optional[str] = None) -> Dict[str, Optional[str]]:
    """``{'version': ..., 'error': ...}``: version of an importable module, else why not."""
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            return {"version": None, "error": "not installed"}
        return {"version": None, "error": f"import failed: {type(exc).__name__}: {exc}"}
    except Exception as exc:  # a compiled extension built for another torch, ...
        return {"version": None, "error": f"import failed: {type(exc).__name__}: {_short(exc)}"}
    version = getattr(mod, "__version__", None)
    if version is None and dist:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version(dist)
        except Exception:
            version = "unknown"
    return {"version": str(version), "error": None}


def _cudnn_version() -> Optional[str]:
    try:
        v = torch.backends.cudnn.version()
    except Exception:
        return None
    if not v:
        return None
    if v >= 90000:  # cuDNN 9: major * 10000 + minor * 100 + patch
        return f"{v // 10000}.{(v % 10000) // 100}.{v % 100}"
    return f"{v // 1000}.{(v % 1000) // 100}.{v % 100}"


def driver_version() -> Optional[str]:
    """The NVIDIA driver version (NVML when importable, else ``nvidia-smi``), or ``None``."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except Exception:
            pass
    return None


def versions() -> Dict[str, Dict]:
    """Versions of the stack tdsk runs on (``None`` + ``error`` for what is missing)."""
    from tdsk._version import version as tdsk_version

    out = {
        "tdsk": {"version": tdsk_version(), "error": None},
        "python": {"version": platform.python_version(), "error": None},
        "torch": {"version": torch.__version__, "error": None, "cuda": torch.version.cuda,
                  "cudnn": _cudnn_version(), "cuda_available": torch.cuda.is_available()},
    }
    out["triton"] = _module_version("triton")
    out["open_clip"] = _module_version("open_clip", "open_clip_torch")
    out["dali"] = _module_version("nvidia.dali", "nvidia-dali-cuda130")
    out["xformers"] = _module_version("xformers")
    out["pyav"] = _module_version("av")
    return out


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def devices() -> List[Dict]:
    """Every device found: the CPU and each CUDA GPU."""
    found = [{"name": "cpu", "type": "cpu", "description": cpu_name(), "machine": platform.machine(),
              "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        driver = driver_version()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append({"name": f"cuda:{i}", "type": "cuda", "description": p.name,
                          "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                          "multiprocessors": p.multi_processor_count, "driver": driver})
    return found


# ---------------------------------------------------------------------------
# which implementation serves what, and why
# ---------------------------------------------------------------------------

def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cpu_reason() -> str:
    if os.environ.get("TDSK_DISABLE_EXT") == "1":
        return "disabled by TDSK_DISABLE_EXT=1"
    spec = None
    try:
        spec = importlib.util.find_spec("tdsk._C")
    except Exception:
        pass
    if spec is None:
        here = os.path.dirname(os.path.abspath(__file__))
        others = sorted(f for f in os.listdir(here) if f.startswith("_C.") and f.endswith((".so", ".pyd")))
        tag = sys.implementation.cache_tag  # e.g. cpython-312
        if others:
            return f"no tdsk._C built for {tag} (only {', '.join(others)})"
        return "tdsk._C not built (no .so)"
    try:
        importlib.import_module("tdsk._C")
    except Exception as exc:
        return f"tdsk._C failed to load ({type(exc).__name__}: {_short(exc)})"
    return "tdsk._C loads but its kernels do not serve the ops (a stale build?)"


def _cuda_reason() -> str:
    if os.environ.get("TDSK_DISABLE_TRITON") == "1":
        return "disabled by TDSK_DISABLE_TRITON=1"
    if importlib.util.find_spec("triton") is None:
        return "Triton not installed"
    try:
        importlib.import_module("tdsk.kernels")
    except ModuleNotFoundError as exc:
        if exc.name == "tdsk.kernels":
            return "tdsk.kernels not installed (a checkout without `pip install -e .`?)"
        return f"tdsk.kernels failed to import (ModuleNotFoundError: {_short(exc)})"
    except Exception as exc:
        return f"tdsk.kernels failed to import ({type(exc).__name__}: {_short(exc)})"
    return "tdsk.kernels imports but its kernels do not serve the ops"


def _xformers_reason() -> str:
    if os.environ.get("TDSK_DISABLE_XFORMERS") == "1":
        return "disabled by TDSK_DISABLE_XFORMERS=1"
    info = _module_version("xformers")
    if info["error"] == "not installed":
        return "xformers not installed"
    try:
        importlib.import_module("xformers.ops")
    except Exception as exc:
        return f"xformers.ops failed to import ({type(exc).__name__}: {_short(exc)})"
    return "xformers unavailable"


def implementations(device_types: Optional[List[str]] = None) -> Dict[str, Dict[str, Dict[str, str]]]:
    """``{device_type: {op: {'impl': ..., 'reason': ...}}}`` for ``cpu`` and ``cuda``.

    The implementation names come from :func:`tdsk.ops.backend_report` and
    :func:`tdsk.ops.attention.attention_backend` (what the ops really dispatch to); the
    reasons are worked out here. The ``cuda`` entry says what *would* serve CUDA tensors
    also when no GPU is present.
    """
    from tdsk.ops import backend_report
    from tdsk.ops.attention import attention_backend

    report = backend_report()
    out: Dict[str, Dict[str, Dict[str, str]]] = {}
    for dtype in device_types or ["cpu", "cuda"]:
        impl = report.get(dtype, "reference")
        if impl == "c++":
            reason = "C++ kernels (tdsk._C)"
        elif impl == "triton":
            reason = f"Triton kernels (tdsk.kernels, triton {_module_version('triton')['version']})"
        else:
            reason = _cpu_reason() if dtype == "cpu" else _cuda_reason() if dtype == "cuda" else "no kernels"
        entry = {op: {"impl": impl, "reason": reason} for op in ("temporal_pool_diff", "frame_diff_concat")}
        if dtype == "cuda":
            attn = attention_backend("cuda")
            attn_reason = "xformers memory_efficient_attention" if attn == "xformers" else _xformers_reason()
        else:
            attn, attn_reason = attention_backend(dtype), "xformers is used on CUDA only"
        entry["attention"] = {"impl": attn, "reason": attn_reason}
        dali = _module_version("nvidia.dali")
        if dtype == "cuda" and dali["version"]:
            entry["video_decode"] = {"impl": "dali", "reason": f"NVDEC via DALI {dali['version']} (data.decoder=auto)"}
        elif dtype == "cuda":
            entry["video_decode"] = {"impl": "pyav", "reason": f"DALI {dali['error']}"}
        else:
            entry["video_decode"] = {"impl": "pyav", "reason": "data.decoder=auto on CPU: loader workers"}
        out[dtype] = entry
    return out
