"""Sphinx configuration of the optg_jax documentation site (MyST Markdown).

Build it from the repository root, with warnings as errors:

  pip install -e ".[docs]"
  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

# The repository root: `optg_jax` for autodoc, also without an install.
sys.path.insert(0, os.path.abspath(".."))

project = "optg_jax"
author = "optg_jax authors"
copyright = "optg_jax authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
# make_results.sh is a script; _build is the output.
exclude_patterns = ["_build", "make_results.sh"]

# MyST: `#heading` links within and across pages (h1 to h3).
myst_heading_anchors = 3

# autodoc and napoleon: the library's docstrings are Google style; members in
# source order; type hints in the signature, where the code writes them.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# The docstrings are plain text in which `x` is code, as in Markdown.
default_role = "code"

html_theme = "furo"
html_title = "optg_jax"


# The diagnosis records are written by `launch/diagnose.py` (copied in by
# make_results.sh) and start at H2, their sections: the site gives each a
# title, taken from its file name, and leaves the files as they are.
DIAGNOSIS_TITLES = {
    "digits_reference": "ResNet-20 on digits at 99%, the reference's recipe",
    "digits_quickstart": "ResNet-20 on digits at 99%, the quick start's recipe",
    "mlp_reference": "LeNet-300-100 on Fashion-MNIST at 95%, once an epoch",
    "mlp_every1": "LeNet-300-100 on Fashion-MNIST at 95%, every step",
}


def _title_diagnosis(app, docname, source):
  del app  # Unused.
  name = docname.split("/")[-1]
  if docname.startswith("diagnosis/") and name in DIAGNOSIS_TITLES:
    source[0] = f"# Diagnosis: {DIAGNOSIS_TITLES[name]}\n\n" + source[0]


def _literal_blocks(app, what, name, obj, options, lines):
  """An indented block after a line ending in ':' is code, as in the
  library's docstrings (a formula, a call): made a literal block ('::')."""
  del app, what, name, obj, options  # Unused.
  def indent(line):
    return len(line) - len(line.lstrip())
  for i in range(len(lines) - 2):
    line, blank, block = lines[i].rstrip(), lines[i + 1], lines[i + 2]
    if (line.endswith(":") and not line.endswith("::")
        and not line.lstrip().startswith((":", ".."))  # Fields, directives.
        and not blank.strip() and block.strip()
        and indent(block) > indent(line)):
      lines[i] = line + ":"


def _no_builtin_docstrings(app, what, name, obj, options, lines):
  """A constant has no docstring of its own: not that of `tuple` or `float`."""
  del app, name, options  # Unused.
  if what in ("data", "attribute") and lines and (
      "\n".join(lines).strip() == (type(obj).__doc__ or "").strip()):
    lines.clear()


def setup(app):
  app.connect("source-read", _title_diagnosis)
  # After napoleon's own handler (connected when the extension loaded).
  app.connect("autodoc-process-docstring", _literal_blocks, priority=600)
  app.connect("autodoc-process-docstring", _no_builtin_docstrings)
