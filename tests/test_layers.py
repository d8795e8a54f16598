"""Imports only go down: core ← text ← models (with `Pipeline`) ← generation ← training ← integrations ← cli.

Every import in the package counts, module-level or inside a function (lazy), and so do the names a package's
``__init__`` resolves lazily (its ``_EXPORTS`` table). There is no exception list: a module may import its own
layer or the ones below, and the module graph has no cycle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'kdiff_ztsnr'

# the layer of each top-level module or sub-package, bottom first
LAYERS = [
    ('core', {'schedules', 'denoisers', 'sampling', 'guidance', 'img2img', 'losses', 'oracle', 'schedule_policy',
              'files', 'untrusted', 'progress', 'errors', 'rules'}),
    ('text', {'text'}),
    ('models', {'models'}),
    ('generation', {'generation'}),
    ('training', {'training'}),
    ('integrations', {'integrations'}),
    ('cli', {'cli', '__main__', ''}),               # '' = the package's own __init__ (it names every sub-package)
]
RANK = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = ['kdiff_ztsnr', *path.relative_to(PACKAGE).with_suffix('').parts]
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def resolve(module: str, path: Path, level: int, target: str) -> str:
    """The absolute name of a (relative) import inside `module`."""
    if not level:
        return target
    package = module.split('.') if path.name == '__init__.py' else module.split('.')[:-1]
    base = package[:len(package) - level + 1]
    return '.'.join([*base, target] if target else base)


def lazy_exports(tree: ast.Module) -> list[str]:
    """The relative module names of an ``_EXPORTS = {name: module}`` table."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '_EXPORTS' for t in node.targets):
            return [v.value for v in node.value.values]
    return []


def imports(module: str) -> set[str]:
    """The package modules `module` imports, wherever the import statement is."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, path, node.level, node.module or '')
            found |= {f'{base}.{a.name}' if f'{base}.{a.name}' in MODULES else base for a in node.names}
    for name in lazy_exports(tree):                 # importlib.import_module(f'.{name}', __package__)
        relative = f'.{name}'
        level = len(relative) - len(relative.lstrip('.'))
        found.add(resolve(module, path, level, relative.lstrip('.')))
    return {m for m in found if m == 'kdiff_ztsnr' or m.startswith('kdiff_ztsnr.')} - {module}


def layer(module: str) -> int:
    top = module.split('.')[1] if '.' in module else ''
    return RANK[top]


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    assert {m.split('.')[1] if '.' in m else '' for m in MODULES} <= set(RANK)


def test_imports_resolve_to_package_modules():
    """The walk reads real names (a typo in the walk would hide an upward import)."""
    unknown = {(m, t) for m, ts in GRAPH.items() for t in ts if t not in MODULES}
    assert not unknown


@pytest.mark.parametrize('module', sorted(MODULES))
def test_imports_go_down(module):
    up = sorted(t for t in GRAPH[module] if layer(t) > layer(module))
    assert not up, f'{module} ({LAYERS[layer(module)][0]}) imports upward: ' + ', '.join(
        f'{t} ({LAYERS[layer(t)][0]})' for t in up)


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as a path [a, b, …, a], or [] (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 'open':
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        state[m] = 'done'
        stack.pop()
        return []

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return []


def test_no_import_cycle():
    assert find_cycle(GRAPH) == []


def test_the_checks_can_fail():
    """The walk sees a lazy upward import and a cycle when they are there."""
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    tree_text = 'def f():\n    from ..generation.generate import generate\n'
    node = ast.parse(tree_text).body[0].body[0]
    path = PACKAGE / 'models' / 'x.py'
    assert resolve('kdiff_ztsnr.models.x', path, node.level, node.module) == 'kdiff_ztsnr.generation.generate'
    assert layer('kdiff_ztsnr.generation.generate') > layer('kdiff_ztsnr.models.x')
