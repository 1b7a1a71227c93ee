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
    # MathJax served from the built pages (the `docs` extra installs it), so math renders
    # without a network: sphinx.ext.mathjax alone loads it from a CDN.
    "sphinx-mathjax-offline",
    "numpydoc",
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False


def _online(host: str = "docs.python.org", timeout: float = 2.0) -> bool:
    """Whether the intersphinx inventories can be fetched (a build offline must stay clean
    under -W: links to Python, NumPy and SciPy are then plain text)."""
    import socket

    if os.environ.get("LOWRANK_DOCS_OFFLINE"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


if _online():
    extensions.append("sphinx.ext.intersphinx")
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
