"""Build only the compiled tokenizer; all metadata lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

#: What the tokenizer is compiled with; also passed into it so that `edgeproxy --version` says so.
EXTRA_COMPILE_ARGS = ["-O3"]

setup(
    ext_modules=cythonize(
        [
            Extension(
                "edgeproxy._fastxml",
                ["src/edgeproxy/_fastxml.pyx"],
                extra_compile_args=EXTRA_COMPILE_ARGS,
                define_macros=[("EDGEPROXY_CFLAGS", '"' + " ".join(EXTRA_COMPILE_ARGS) + '"')],
            )
        ],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
