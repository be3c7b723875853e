"""Where a result came from: device, versions, CPU, torch threads and git revision.

Every result records :func:`environment` for each session that trained it, so a number can
always be traced to the code and machine that produced it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def resolve_device(device: str = "auto") -> Any:
    """'auto' -> cuda if available else cpu; anything else is passed to ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]'; got {device!r}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was requested but no CUDA GPU is available; use --device cpu"
        )
    return resolved


def device_name(device: Any) -> str:
    """Human-readable name of the device the run used."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine() or "unknown"
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


GIT_REV_VARIABLE = "CBNOTES_GIT_REV"


def git_revision() -> dict[str, Any]:
    """``{"git_rev": sha or None, "git_dirty": bool or None}`` of the repository of this package.

    Where the package is not in a git checkout (a copy of its files, say on a machine lent for
    a benchmark), the revision is taken from the environment variable ``CBNOTES_GIT_REV`` if
    set, with ``git_dirty`` None (unknown).
    """
    where = Path(__file__).resolve().parent
    unknown = {"git_rev": os.environ.get(GIT_REV_VARIABLE) or None, "git_dirty": None}
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return unknown
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return unknown
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"git_rev": rev.stdout.strip(), "git_dirty": dirty}


def cpu_description() -> dict[str, str | None]:
    """The CPU's model name and the vector ISA torch's CPU kernels use (e.g. "AVX2", "AVX512").

    Results on the CPU are bit-identical on one machine, but kernels for another ISA round
    differently, and training amplifies that: record both to tell such runs apart.
    """
    import torch

    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        capability: str | None = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return {"cpu_model": model or platform.processor() or None, "cpu_capability": capability}


def environment(device: Any) -> dict[str, Any]:
    """Versions, device, CPU, torch threads and git revision, stored with every result."""
    import torch

    import cbnotes

    try:
        import torchvision

        tv_version: str | None = str(torchvision.__version__)
    except ImportError:
        tv_version = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": str(torch.__version__),
        "torchvision": tv_version,
        "cbnotes": cbnotes.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        **cpu_description(),
        **git_revision(),
    }


def now() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
