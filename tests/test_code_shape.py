"""Code shape: no function in specialize/ runs past MAX_LINES lines without a stated reason.

A function (or method) longer than MAX_LINES lines fails unless the line directly above its
``def`` (above its decorators, if any) or the first line of its body is a comment starting with
``# long:`` that says why it stays long. Lines are counted from the ``def`` (decorators
excluded) to the function's last line, so a docstring counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "specialize"
MAX_LINES = 80
MARK = "# long:"


def _marked(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether a ``# long:`` comment is right above the def (or decorators) or opens the body."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])  # 1-based
    above = lines[first - 2].strip() if first >= 2 else ""
    body = [ln.strip() for ln in lines[_header_end(lines, node) : node.end_lineno] if ln.strip()]
    return above.startswith(MARK) or (bool(body) and body[0].startswith(MARK))


def _header_end(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """0-based index of the first line after the ``def`` header (which may span lines)."""
    for i in range(node.lineno - 1, node.body[0].lineno - 1):
        if lines[i].split("#", 1)[0].rstrip().endswith(":"):
            return i + 1
    return node.lineno


def long_functions(package: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    """'path:qualified.name:lines' for every unmarked function longer than ``limit`` lines."""
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text, filename=str(path))
        for name, node in _functions(tree):
            length = node.end_lineno - node.lineno + 1
            if length > limit and not _marked(lines, node):
                found.append(f"{path.relative_to(package.parent)}:{name}:{length}")
    return found


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def test_no_unexplained_long_functions():
    offenders = long_functions()
    assert not offenders, (
        f"functions over {MAX_LINES} lines without a '{MARK} reason' comment above the def "
        "or on the first body line:\n" + "\n".join(offenders)
    )


def test_rule_counts_and_honours_the_long_marker(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES)) + "\n"
    (pkg / "a.py").write_text(
        "def short():\n    return 1\n\n\n"
        f"def too_long():\n{body}\n\n"
        f"# long: one table, split it and it reads worse\ndef above():\n{body}\n\n"
        f"def first_line(\n    a,\n):\n    # long: generated dispatch\n{body}\n\n"
        f"class C:\n    @staticmethod\n    def method():\n{body.replace('    ', '        ')}\n",
        encoding="utf-8",
    )
    (pkg / "b.py").write_text(
        "class D:\n    # long: the reason\n    @property\n"
        f"    def marked(self):\n{body.replace('    ', '        ')}",
        encoding="utf-8",
    )
    assert long_functions(pkg) == [
        f"pkg/a.py:too_long:{MAX_LINES + 1}",
        f"pkg/a.py:C.method:{MAX_LINES + 1}",
    ]
    # Exactly MAX_LINES lines is allowed.
    (pkg / "a.py").write_text("def edge():\n" + body[: body.rindex("\n    x")] + "\n")
    assert long_functions(pkg) == []
