"""Build numpyllm's compiled kernels: attention (kernels/attention.pyx -> numpyllm._attention)
and the element-wise layers and optimizer (kernels/layers.pyx -> numpyllm._layers).

OpenMP is used when the compiler accepts it (gcc, clang with libomp); otherwise the
kernels are built serial, as scikit-learn does. No -ffast-math (it would break the
-inf causal mask) and no -march=native (the wheel must run on other CPUs).
"""
import os
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
    """
)


def openmp_flags(compiler):
    """Return (compile_args, link_args) enabling OpenMP, or ([], []) if the compiler lacks it."""
    if os.environ.get("NUMPYLLM_NO_OPENMP"):
        return [], []
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"]), (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    for compile_args, link_args in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write(OPENMP_PROBE)
            try:
                objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_args)
                compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=link_args)
            except Exception:  # any compile or link failure means "no OpenMP here"
                continue
        return compile_args, link_args
    print("numpyllm: the compiler has no OpenMP; building the kernel single-threaded", file=sys.stderr)
    return [], []


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        compile_args, link_args = openmp_flags(self.compiler)
        optimize = ["/O2"] if self.compiler.compiler_type == "msvc" else ["-O3", "-fno-trapping-math"]
        for ext in self.extensions:
            ext.extra_compile_args = optimize + compile_args
            ext.extra_link_args = link_args
        super().build_extensions()


def extensions():
    from Cython.Build import cythonize

    attention = Extension(
        "numpyllm._attention",
        ["kernels/attention.pyx"],
        include_dirs=["kernels"],
        depends=["kernels/fastexp.h", "kernels/rows.h", "kernels/avx512.h", "kernels/tiles.h"],
    )
    layers = Extension(
        "numpyllm._layers",
        ["kernels/layers.pyx"],
        include_dirs=["kernels"],
        depends=["kernels/fastexp.h", "kernels/rows.h", "kernels/decode.h", "kernels/avx512.h", "kernels/gemm.h"],
    )
    return cythonize(
        [attention, layers],
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtWithOpenMP})
