"""Sphinx configuration: numpydoc API reference, pydata theme, pages in reStructuredText."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import lowrank_online  # noqa: E402

project = "lowrank_online"
author = "the lowrank_online developers"
release = version = lowrank_online.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "scipy": ("https://docs.scipy.org/doc/scipy", None),
}
html_theme = "pydata_sphinx_theme"
html_static_path = ["_static"]
html_title = "lowrank_online"
# Fragments written by the evidence and benchmark scripts are included by the pages, not built alone.
exclude_patterns = ["_build", "evidence/*.rst", "scaling/*"]
