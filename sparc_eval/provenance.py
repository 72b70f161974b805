"""What checkpoints and result records say about the code that made them: git revision and package versions."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

_PACKAGES = ("sparc-eval", "torch", "torchvision", "open_clip_torch", "safetensors", "numpy", "pycocotools")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> str | None:
    """HEAD of the sparc-eval source tree, with "+dirty" when it has uncommitted changes; None outside git."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else platform.processor()), "unknown" when neither says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def numerics() -> dict[str, object]:
    """What decides the low bits of a CPU run besides the seed (README, "What a seed reproduces"): the CPU, the
    kernels ATen and MKL pick for it, the intra-op thread count and whether deterministic algorithms are on."""
    import os
    import re

    import torch

    build = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.\-]+)", build)
    onednn = re.search(r"MKL-DNN v([\d.]+)", build)
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "intra_op_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "torch": torch.__version__,
        "mkl": mkl.group(1) if mkl else None,
        "onednn": onednn.group(1) if onednn else None,
        "env": {k: os.environ[k] for k in _NUMERICS_ENV if k in os.environ},
    }


# Environment variables that change which kernels run or how many threads split a reduction.
_NUMERICS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "MKL_DYNAMIC", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
