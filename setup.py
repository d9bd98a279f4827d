"""The extension build of pixcontrast (the metadata and package list are in pyproject.toml).

Builds ``pixcontrast._C`` from csrc/: the schema registry and the C++ CPU kernels always;
the CUDA kernels (csrc/cuda/*.cu and their *_binding.cpp) only when torch was built with
CUDA and nvcc is found. Honours TORCH_CUDA_ARCH_LIST and MAX_JOBS (read by
torch.utils.cpp_extension). No network, no git.

The extension is built against the torch that is already installed, so torch is not a
build requirement and the build must not be isolated from it:

    pip install --no-build-isolation -e .
    pip install --no-build-isolation --no-deps --no-index -e .   # no package registry
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            f"torch cannot be imported in this build environment ({exc}). pixcontrast builds "
            f"its C++/CUDA extension against the torch that is already installed, so torch is "
            f"not a build requirement and pip's default build isolation (a fresh environment "
            f"without torch) cannot build it. Install torch first (e.g. `pip install -r "
            f"requirements.txt`), then install pixcontrast with "
            f"`pip install --no-build-isolation -e .` (on a machine without a package "
            f"registry: `pip install --no-build-isolation --no-deps --no-index -e .`).") from exc
    return torch


def _extensions():
    torch = _import_torch()
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    # -ffp-contract=off: a logit s = dot·(1/τ) must be rounded before any later s − λ, in
    # every pass, or the column backward's e^{s−λ} drifts from the forward's (docs/design.md
    # §2.3); GCC would otherwise fuse them into FMAs in the AVX2/AVX-512 clones.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]
    if sys.platform == "darwin":
        cxx.remove("-fopenmp")
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*_binding.cpp")
    want_cuda = os.environ.get("PIXCONTRAST_NO_CUDA", "0") != "1"
    if want_cuda and torch.version.cuda is not None and CUDA_HOME is not None and cuda_sources:
        return [CUDAExtension(
            "pixcontrast._C", sources + cuda_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("PIXCONTRAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--use_fast_math",
                                                      "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )]
    return [CppExtension(
        "pixcontrast._C", sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=[] if sys.platform == "darwin" else ["-fopenmp"],
    )]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


# Everything else (name, version, dependencies, packages, package_dir) is in pyproject.toml.
setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
)
