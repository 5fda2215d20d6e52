"""What a node reads, and a stable topological order of a graph's nodes."""

from __future__ import annotations

import heapq

import onnx


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (If branches, Loop and Scan bodies)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def reads(node: onnx.NodeProto) -> list[str]:
    """Names ``node`` reads: its non-empty inputs and its subgraphs' outer-scope names."""
    names = [i for i in node.input if i]
    for graph in subgraphs(node):
        inner = {o for n in graph.node for o in n.output}
        inner |= {i.name for i in graph.input} | {i.name for i in graph.initializer}
        names += [i for n in graph.node for i in reads(n) if i not in inner]
    return names


def set_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Make ``nodes`` (copied first: they may be ``graph``'s own) the nodes of ``graph``."""
    copies = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def topological_sort(graph: onnx.GraphProto) -> bool:
    """Reorder ``graph.node`` in place so every value is written before it is read.

    The order is stable: among the nodes ready to run, the earliest in the file comes first, so a
    sorted graph keeps its order. Nodes that wait on a value nothing writes (or on a cycle) are
    appended in file order. True if the order changed.
    """
    nodes = list(graph.node)
    writer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waits_on = [
        {writer[r] for r in reads(n) if r in writer and writer[r] != i} for i, n in enumerate(nodes)
    ]
    readers: list[list[int]] = [[] for _ in nodes]
    for i, deps in enumerate(waits_on):
        for d in deps:
            readers[d].append(i)
    missing = [len(deps) for deps in waits_on]
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for r in readers[i]:
            missing[r] -= 1
            if missing[r] == 0:
                heapq.heappush(ready, r)
    placed = set(order)
    order += [i for i in range(len(nodes)) if i not in placed]
    if order == list(range(len(nodes))):
        return False
    set_nodes(graph, [nodes[i] for i in order])
    return True
