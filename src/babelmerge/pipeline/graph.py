"""The order steps run in: a topological order of the dependency graph, declaration order among equals."""

from __future__ import annotations

from ..errors import BabelmergeError


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` in the graph ``step -> steps it depends on``, or ``None``."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in deps[node]:
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in deps:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def topological_order(deps: dict[str, list[str]]) -> list[str]:
    """Every step after the steps it depends on; among steps whose dependencies are done, declaration order first.

    ``deps`` maps each step (in declaration order) to the steps it depends on. Raises on a cycle, naming it.
    """
    cycle = find_cycle(deps)
    if cycle:
        raise BabelmergeError(f"steps depend on each other in a cycle: {' -> '.join(cycle)}")
    done: set[str] = set()
    order: list[str] = []
    while len(order) < len(deps):
        ready = next(n for n in deps if n not in done and all(d in done for d in deps[n]))
        order.append(ready)
        done.add(ready)
    return order
