"""The one build definition of pixcontrast.

Builds ``pixcontrast._C`` from csrc/: the schema registry and the C++ CPU kernels always;
the CUDA kernels (csrc/cuda/*.cu and their *_binding.cpp) only when torch was built with
CUDA and nvcc is found. Honours TORCH_CUDA_ARCH_LIST and MAX_JOBS (read by
torch.utils.cpp_extension). No network, no git.

    pip install --no-build-isolation -e .
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"]
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


setup(
    name="pixcontrast",
    version="0.1.0",
    description="Fused kernels for the pixel-wise contrastive loss of Wang et al. (ICCV 2021)",
    packages=["pixcontrast", "pixcontrast.data", "pixcontrast.models", "pixcontrast.kernels"],
    package_dir={"pixcontrast": "pixcontrast", "pixcontrast.kernels": "kernels"},
    python_requires=">=3.10",
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
    zip_safe=False,
)
