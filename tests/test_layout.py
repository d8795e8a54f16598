"""The tests mirror the package (issue 19): tests/core/ for the top-level modules, tests/<pkg>/ for each
subpackage, and every module has a direct test there.

A module kdiff_ztsnr/<pkg>/…/<m>.py is directly tested when a test file under its mirrored folder imports it by
name (``from kdiff_ztsnr.<pkg> import m``, ``from kdiff_ztsnr.<pkg>.m import X``, ``import kdiff_ztsnr.<pkg>.m``);
a package ``__init__`` with code counts when a test imports one of its own names (``from kdiff_ztsnr.<pkg> import
Name``) or the package itself. Read by AST only: nothing is imported. The command line's subpackage is tested
in tests/cli/ like any other; ``python -m kdiff_ztsnr`` (``__main__``, one call of cli.main) is run by tests/cli.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'kdiff_ztsnr'
TESTS = ROOT / 'tests'
OTHER_FOLDERS = {'benchmarks'}            # the benchmarks/ package's smoke runs


def is_entry(path: Path) -> bool:
    """A ``__main__`` module: only ``python -m`` runs it (tests/cli does)."""
    return path.name == '__main__.py'


def has_code(init: Path) -> bool:
    """Whether a package __init__ holds more than its docstring."""
    body = ast.parse(init.read_text()).body
    return bool(body[1:] if body and isinstance(body[0], ast.Expr) and
                isinstance(body[0].value, ast.Constant) else body)


def modules() -> dict[str, Path]:
    """Dotted name → the tests/ folder it belongs in, for every module and every package __init__ with code."""
    found = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        if is_entry(path) or (path.name == '__init__.py' and not has_code(path)):
            continue
        parts = path.relative_to(ROOT).with_suffix('').parts
        if path.name == '__init__.py':
            parts = parts[:-1]
        found['.'.join(parts)] = TESTS / ('core' if path.parent == PACKAGE else parts[1])
    return found


def imported(tree: ast.AST, known) -> set[str]:
    """The known modules a test file imports by name (a package only when one of its own names is imported)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f'{node.module}.{a.name}' for a in node.names}
            names.update(subs & set(known))
            if subs - set(known):
                names.add(node.module)
    return names & set(known)


def gap() -> set[str]:
    known = modules()
    covered = set()
    for test in TESTS.rglob('test_*.py'):
        for name in imported(ast.parse(test.read_text()), known):
            if known[name] in test.parents:
                covered.add(name)
    return set(known) - covered


def test_every_subpackage_has_a_mirrored_test_folder():
    subpackages = {p.parent.name for p in PACKAGE.glob('*/__init__.py')}
    assert subpackages >= {'cli', 'generation', 'models', 'text', 'training', 'integrations'}
    folders = {p.parent.name for p in TESTS.glob('*/__init__.py')}
    assert subpackages | {'core'} <= folders, f'no tests/ folder for {sorted(subpackages | {"core"} - folders)}'
    assert folders <= subpackages | {'core'} | OTHER_FOLDERS, \
        f'tests/ folders that mirror nothing: {sorted(folders - subpackages - {"core"} - OTHER_FOLDERS)}'


def test_every_module_has_a_direct_test_in_its_folder():
    missing = gap()
    assert not missing, f'modules without a direct test in their tests/ folder (add one): ' \
        f'{ {m: str(modules()[m].relative_to(ROOT)) for m in sorted(missing)} }'


def test_the_rule_reads_imports_as_documented():
    known = {'kdiff_ztsnr.generation': 0, 'kdiff_ztsnr.generation.batch': 0, 'kdiff_ztsnr.generation.names': 0,
             'kdiff_ztsnr.generation.device': 0}
    tree = ast.parse('from kdiff_ztsnr.generation import batch\nfrom kdiff_ztsnr.generation.names import x\n'
                     'import kdiff_ztsnr.generation.device as d\n')
    assert imported(tree, known) == {'kdiff_ztsnr.generation.batch', 'kdiff_ztsnr.generation.names',
                                     'kdiff_ztsnr.generation.device'}                # not the package itself
    assert imported(ast.parse('from kdiff_ztsnr.generation import generate, GenerationParams'), known) == \
        {'kdiff_ztsnr.generation'}                                                   # one of its own names
