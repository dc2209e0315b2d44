"""The light install: `import optg_jax` needs JAX, NumPy and optax only; the
parts that need the `train` extra say so in one line."""

import os
import subprocess
import sys
import textwrap

import pytest

from optg_jax import extras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter in which the `train` extra's packages cannot
# be imported, as after `pip install optg_jax`.
_WITHOUT_TRAIN_EXTRA = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"flax", "orbax", "clu", "ml_collections", "tensorflow",
               "tensorflow_datasets", "sklearn", "matplotlib"}

    class Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
          raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

    sys.meta_path.insert(0, Block())
    import importlib.util
    _find_spec = importlib.util.find_spec
    def find_spec(name, package=None):
      if name.split(".")[0] in BLOCKED:
        return None
      return _find_spec(name, package)
    importlib.util.find_spec = find_spec
""")


def _run(code: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-c", _WITHOUT_TRAIN_EXTRA + textwrap.dedent(code)],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_the_library_imports_and_runs_without_the_train_extra():
  result = _run("""
      import jax.numpy as jnp
      import optax
      import optg_jax as optg
      params = {"w": jnp.arange(8.0).reshape(2, 4)}
      tx = optax.chain(optg.mask_transform(0.5, 0.1), optax.sgd(0.1))
      state = tx.init(params)
      updates, state = tx.update(params, state, params)
      print(int(optg.get_masks(state)["w"].sum()))
      heavy = sorted(m for m in sys.modules
                     if m.split(".")[0] in BLOCKED)
      print(heavy)
  """)
  assert result.returncode == 0, result.stderr
  # Half of the 8 weights kept; none of the extra's packages imported.
  assert result.stdout.splitlines() == ["4", "[]"]


PARTS = {  # A module that needs the extra -> the part its error names.
    "optg_jax.harness": "optg_jax.harness",
    "optg_jax.train": "optg_jax.harness",
    "optg_jax.studies": "optg_jax.studies",
    "optg_jax.data": "optg_jax.data",
    "optg_jax.models": "optg_jax.models",
    "optg_jax.flops": "optg_jax.flops",
}


def test_a_part_that_needs_the_extra_says_so_in_one_line():
  result = _run(f"""
      import importlib
      for module in {sorted(PARTS)!r}:
        try:
          importlib.import_module(module)
          print(module, "imported")
        except ImportError as e:
          print(module, "|", e)
  """)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert [line.split(" ")[0] for line in lines] == sorted(PARTS)
  for line in lines:
    module, message = line.split(" | ")
    assert message.startswith(f"{PARTS[module]} needs the training extra (")
    assert message.endswith("pip install 'optg_jax[train]'")


def test_require_names_every_missing_package():
  extras.require(("os", "json"), "x")  # Present: nothing raised.
  with pytest.raises(ImportError) as raised:
    extras.require(("os", "no_such_package_a", "no_such.sub"), "optg_jax.x")
  assert str(raised.value) == (
      "optg_jax.x needs the training extra (no_such_package_a, no_such.sub "
      "not installed): pip install 'optg_jax[train]'")


def _module_imports(path: str, name: str, modules) -> set:
  """The optg_jax modules a module imports when it is imported (its
  top-level statements; imports inside functions run later)."""
  import ast  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    tree = ast.parse(f.read())
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in tree.body:
    for sub in ast.walk(node):
      if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
        break
      if isinstance(sub, ast.Import):
        found.update(a.name for a in sub.names)
      elif isinstance(sub, ast.ImportFrom):
        base = sub.module or ""
        if sub.level:
          base = ".".join(package.split(".")[:len(package.split(".")) -
                                             sub.level + 1] + [base]).strip(".")
        found.add(base)
        found.update(f"{base}.{a.name}" for a in sub.names)
  return {m for m in found if m in modules and m != name}


def _optg_modules():
  modules = {}
  for folder, _, files in os.walk(os.path.join(ROOT, "optg_jax")):
    for file in files:
      if file.endswith(".py"):
        path = os.path.join(folder, file)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        modules[rel.removesuffix(".__init__")] = path
  return modules


def test_no_import_circle_and_the_library_imports_no_harness():
  modules = _optg_modules()
  graph = {name: _module_imports(path, name, modules)
           for name, path in modules.items()}
  # A package's __init__ runs before any of its modules: not a circle.
  for name in graph:
    graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
  done, stack = set(), []

  def visit(name):
    if name in stack:
      raise AssertionError("import circle: " + " -> ".join(
          stack[stack.index(name):] + [name]))
    if name in done:
      return
    stack.append(name)
    for other in sorted(graph[name]):
      visit(other)
    stack.pop()
    done.add(name)

  for name in sorted(graph):
    visit(name)
  parts = ("optg_jax.harness", "optg_jax.studies", "optg_jax.data",
           "optg_jax.models", "optg_jax.train")
  library = [n for n in graph if n != "optg_jax.flops" and
             not n.startswith(parts)]
  assert len(library) >= 15
  for name in library:
    assert not {m for m in graph[name] if m.startswith(parts)}, name


def test_no_module_over_600_lines():
  lengths = {}
  for name, path in _optg_modules().items():
    with open(path) as f:
      lengths[name] = len(f.read().splitlines())
  assert len(lengths) > 40
  assert {n: k for n, k in lengths.items() if k > 600} == {}
