"""The built-in corpus, `python-docs`: the prose that ships with the running Python (the reference
manual's topics and the standard library's docstrings, read with ast: nothing is imported)."""

from __future__ import annotations

import ast
import multiprocessing
import os
import sysconfig
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BUILTIN_SOURCE = "python-docs"
# Standard-library folders that hold tests, tools or vendored code rather than documentation.
_STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "ensurepip", "site-packages", "turtledemo",
                "pydoc_data", "__pycache__"}


def python_docs(min_doc_chars: int) -> Iterator[dict]:
    """Reference-manual topics plus one document of docstrings per standard-library module."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield {"id": f"topics:{name}", "text": topics[name], "source": BUILTIN_SOURCE}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = [rel for rel in sorted(p.relative_to(stdlib) for p in stdlib.rglob("*.py"))
               if not any(part in _STDLIB_SKIP or part.startswith("test") for part in rel.parts)]
    # Parsing is most of this source's time and each module's is independent: one process per
    # core, results in module order (the same documents, in the same order, as one process).
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("fork")) as pool:
        for rel, docs in zip(modules, pool.map(module_docstrings, [stdlib / m for m in modules],
                                               chunksize=32), strict=True):
            text = "\n\n".join(d for d in docs if len(d) >= min_doc_chars)
            if text:
                yield {"id": f"stdlib:{rel.as_posix()}", "text": text, "source": BUILTIN_SOURCE}


def module_docstrings(path: Path) -> list[str]:
    """Docstrings of a module and its classes and functions, read with ast (nothing imported)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return []  # a few stdlib files are templates or target other versions
    return [doc for node in [tree, *definitions(tree)] if (doc := ast.get_docstring(node))]


def definitions(tree: ast.Module) -> list[ast.AST]:
    """The functions and classes of a module in ast.walk's order (breadth first), reached through
    statements only. A definition is a statement, never inside an expression, so skipping the
    expressions (most of a module's nodes, and most of the time of a full walk) loses none."""
    found, queue = [], deque([tree])
    while queue:
        node = queue.popleft()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.append(node)
        queue.extend(child for child in ast.iter_child_nodes(node)
                     if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case))
    return found
