"""Build only the compiled tokenizer; all metadata lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "edgeproxy._fastxml",
                ["src/edgeproxy/_fastxml.pyx"],
                extra_compile_args=["-O3"],
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
