"""docs/architecture.md names every module of mmnet_jax/ and only names that exist.

The doc is read as text and the package as ASTs (nothing is imported), so this stays fast.

* The module tree (the fenced block that starts with `mmnet_jax/`) must list every .py file
  under mmnet_jax/ except __init__.py, each with a description, and no file that is gone.
* In a tree line, every `name(` and every backticked name of the description is a top-level
  name of that line's module (or a dotted name, resolved as below).
* Every backticked dotted name in the doc whose first part is a module of the package
  (`evaluate.evaluate_workdir`, `mmnet_jax.data.datasets.FewShotSplit`, `models/conv.Conv2d`)
  or a class of it (`Evaluator.evaluate`) must resolve: module, then top-level name, then a
  class member. Config fields are written `config.train.num_steps`, which resolves nothing.
"""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'mmnet_jax'
DOC = REPO / 'docs' / 'architecture.md'
_FENCE = re.compile(r'^```.*?^```', re.M | re.S)
_SPAN = re.compile(r'`([^`\n]+)`')
_TOKEN = re.compile(r'[A-Za-z_][\w./]*')
_CALL = re.compile(r'(?<![\w.])([A-Za-z_][\w.]*)\(')
_FILE_SUFFIXES = ('.py', '.md', '.json', '.png', '.yaml', '.pth', '.pkl', '.txt', '.npz')


def package_modules() -> dict[str, pathlib.Path]:
  """'mmnet_jax.data.build_lock' -> its file, for every module but the __init__ files."""
  return {'.'.join(p.relative_to(REPO).with_suffix('').parts): p
          for p in sorted(PACKAGE.rglob('*.py')) if p.name != '__init__.py'}


def tree_entries(text: str) -> dict[str, str]:
  """{'mmnet_jax/data/build_lock.py': description} from the doc's module tree.

  The tree is the fenced block whose first line is `mmnet_jax/`; two spaces indent one level,
  and a name ending in '/' opens a folder.
  """
  block = next((b for b in _FENCE.findall(text) if b.splitlines()[1:2] == ['mmnet_jax/']), None)
  assert block is not None, f'{DOC}: no fenced module tree starting with a line "mmnet_jax/"'
  entries, folders = {}, []
  for line in block.splitlines()[1:-1]:
    if not line.strip():
      continue
    level = (len(line) - len(line.lstrip(' '))) // 2
    name, _, description = line.strip().partition(' ')
    folders = folders[:level]
    path = '/'.join(folders + [name.rstrip('/')])
    if name.endswith('/'):
      folders.append(name.rstrip('/'))
    elif path.startswith('mmnet_jax/'):
      entries[path] = description.strip()
  return entries


def _top_level(tree: ast.AST) -> dict[str, ast.AST]:
  """Names bound at the top of a module or class body -> their node."""
  names = {}
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names[node.name] = node
    elif isinstance(node, ast.Assign):
      for target in node.targets:
        for t in ast.walk(target):
          if isinstance(t, ast.Name):
            names[t.id] = node
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      names[node.target.id] = node
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      for alias in node.names:
        names[(alias.asname or alias.name).split('.')[0]] = node
  return names


class Package:
  """The package's modules as ASTs, and dotted-name resolution against them."""

  def __init__(self):
    self.files = package_modules()
    self.trees = {m: ast.parse(p.read_text()) for m, p in self.files.items()}
    self.names = {m: _top_level(t) for m, t in self.trees.items()}
    # Every dotted suffix of a module path names it ('build_lock', 'data.build_lock', ...)
    # unless two modules share it; a class name that one module alone defines names it too.
    keys: dict[str, set[str]] = {}
    for module in self.files:
      parts = module.split('.')
      for i in range(len(parts)):
        keys.setdefault('.'.join(parts[i:]), set()).add(module)
    self.module_keys = {k: next(iter(v)) for k, v in keys.items() if len(v) == 1}
    classes: dict[str, set[str]] = {}
    for module, tree in self.trees.items():
      for node in tree.body:
        if isinstance(node, ast.ClassDef):
          classes.setdefault(node.name, set()).add(module)
    self.class_homes = {k: next(iter(v)) for k, v in classes.items() if len(v) == 1}

  def resolve(self, dotted: str, here: str | None = None) -> str | None:
    """None when `dotted` resolves (or names nothing of the package), else why not.

    `here`: the module a bare name belongs to (a tree line's own module).
    """
    parts = dotted.replace('/', '.').strip('.').split('.')
    if here is not None and len(parts) == 1:
      return self._walk(here, parts, dotted)
    for n in range(len(parts), 0, -1):
      module = self.module_keys.get('.'.join(parts[:n]))
      if module:
        return self._walk(module, parts[n:], dotted)
    if parts[0] in self.class_homes and len(parts) > 1:
      return self._walk(self.class_homes[parts[0]], parts, dotted)
    return None

  def _walk(self, module: str, attrs: list[str], dotted: str) -> str | None:
    names = self.names[module]
    for i, attr in enumerate(attrs):
      node = names.get(attr)
      if node is None:
        return f'`{dotted}`: {self.files[module].relative_to(REPO)} has no {attr!r}'
      if isinstance(node, ast.ClassDef):
        names = _top_level(node)
      elif isinstance(node, (ast.Import, ast.ImportFrom)) and i + 1 < len(attrs):
        source = node.module if isinstance(node, ast.ImportFrom) else None
        target = f'{source}.{attr}' if source else attr
        if target in self.files:           # an imported module of the package: follow it
          return self._walk(target, attrs[i + 1:], dotted)
        return None                        # outside the package: not ours to check
      elif i + 1 < len(attrs):
        return None                        # an attribute of a value: not checked
    return None


def _dotted_spans(text: str):
  """The leading dotted token of every inline code span, file names left out."""
  for span in _SPAN.findall(_FENCE.sub('', text)):
    token = _TOKEN.match(span.strip())
    if token and '.' in token.group() and not token.group().endswith(_FILE_SUFFIXES):
      yield token.group()


def doc_problems(text: str, package: Package) -> list[str]:
  """Every module missing from (or stale in) the tree, and every name that does not resolve."""
  problems = []
  entries = tree_entries(text)
  actual = {str(p.relative_to(REPO)) for p in package.files.values()}
  problems += [f'{p}: not named in the module tree of {DOC.name}'
               for p in sorted(actual - set(entries))]
  problems += [f'{p}: in the module tree of {DOC.name} but no such file'
               for p in sorted(set(entries) - actual)]
  for path, description in sorted(entries.items()):
    if path not in actual:
      continue
    if not description:
      problems.append(f'{path}: no description in the module tree')
    here = '.'.join(pathlib.PurePath(path).with_suffix('').parts)
    spans = [t.group() for t in map(_TOKEN.match, _SPAN.findall(description))
             if t and not t.group().endswith(_FILE_SUFFIXES)]
    for name in _CALL.findall(description) + spans:
      why = package.resolve(name, here)
      problems += [f'{path} (tree): {why}'] if why else []
  for token in _dotted_spans(text):
    why = package.resolve(token)
    problems += [why] if why else []
  return problems


def test_architecture_doc_names_every_module_and_only_real_names():
  problems = doc_problems(DOC.read_text(), Package())
  assert not problems, f'{DOC.relative_to(REPO)}:\n' + '\n'.join(problems)


def test_the_checker_catches_a_missing_module_and_a_wrong_name():
  """The checks themselves, on a made-up doc: they must not pass anything."""
  package = Package()
  modules = [str(p.relative_to(REPO)) for p in package.files.values()]
  tree, folder = ['```', 'mmnet_jax/'], None
  for path in modules[1:]:                   # the first module left out
    *inner, name = pathlib.PurePath(path).parts[1:]   # the package has one folder level
    if inner and inner[0] != folder:
      tree.append(f'  {inner[0]}/')
    folder = inner[0] if inner else None
    tree.append('  ' * (len(inner) + 1) + name + '  a module')
  tree.append('```')
  text = '\n'.join(tree) + '\n`evaluate.evaluate(config, workdir)` and `evaluate.evaluate_workdir`'
  text += ' and `Evaluator.evaluate` and `config.train.num_steps` and `train.py`\n'
  problems = doc_problems(text, package)
  assert problems == [f'{modules[0]}: not named in the module tree of architecture.md',
                      "`evaluate.evaluate`: mmnet_jax/evaluate.py has no 'evaluate'"]
  assert package.resolve('sqrt', 'mmnet_jax.models.initializers')
  assert package.resolve('train_and_evaluate', 'mmnet_jax.train') is None
  # A bare call in a tree line is its own module's: evaluate.py has no evaluate() any more.
  assert package.resolve('evaluate', 'mmnet_jax.evaluate')
