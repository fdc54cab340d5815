"""Topologies and their k shortest paths (by length), computed once per run.

A path is the tuple of the undirected link indices it crosses: both directions of a
link share one spectrum, as FUSION allocates both at once.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise

from fusion_runner.refsim.settings import TOPOLOGY, SettingsError

Link = tuple[int, int, float]  # node a, node b, length (km)
Route = tuple[int, ...]  # link indices
Nodes = tuple[int, ...]  # node sequence
Adjacency = list[list[tuple[int, float]]]  # node -> (neighbour, length)


@dataclass(frozen=True)
class Network:
    num_nodes: int
    links: tuple[Link, ...]
    routes: tuple[tuple[Route, ...], ...]  # index source * num_nodes + target


def build(name: str, k_paths: int) -> Network:
    """The named topology with its k shortest routes between every ordered node pair."""
    links = load_links(name)
    num_nodes = 1 + max(max(a, b) for a, b, _ in links)
    adjacency = _adjacency(num_nodes, links)
    link_index = {frozenset((a, b)): index for index, (a, b, _) in enumerate(links)}
    routes = tuple(
        tuple(
            tuple(link_index[frozenset(hop)] for hop in pairwise(nodes))
            for nodes in k_shortest_paths(adjacency, source, target, k_paths)
        )
        for source in range(num_nodes)
        for target in range(num_nodes)
    )
    return Network(num_nodes, links, routes)


def load_links(name: str) -> tuple[Link, ...]:
    if name == "single_link":
        return ((0, 1, 1.0),)
    if name == "NSFNet":
        text = resources.files("fusion_runner").joinpath("data/nsfnet_links.tsv").read_text()
        return parse_links(text)
    raise SettingsError(f"{TOPOLOGY}.network", f"unknown topology {name!r} (NSFNet, single_link)")


def parse_links(text: str) -> tuple[Link, ...]:
    """`node_a<TAB>node_b<TAB>length_km` lines; `#` starts a comment."""
    rows = (line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))
    return tuple((int(a), int(b), float(length)) for a, b, length in rows)


def k_shortest_paths(adjacency: Adjacency, source: int, target: int, k: int) -> list[Nodes]:
    """Up to k simple paths (as node tuples) in order of length, by best-first search.

    Partial paths leave the heap in order of length, so complete ones do too; on a
    graph this small the frontier stays small. Ties go to the smaller node sequence.
    """
    frontier: list[tuple[float, Nodes]] = [(0.0, (source,))]
    found: list[Nodes] = []
    while frontier and len(found) < k and source != target:
        length, nodes = heapq.heappop(frontier)
        if nodes[-1] == target:
            found.append(nodes)
            continue
        for neighbour, weight in adjacency[nodes[-1]]:
            if neighbour not in nodes:
                heapq.heappush(frontier, (length + weight, (*nodes, neighbour)))
    return found


def _adjacency(num_nodes: int, links: tuple[Link, ...]) -> Adjacency:
    adjacency: Adjacency = [[] for _ in range(num_nodes)]
    for a, b, length in links:
        adjacency[a].append((b, length))
        adjacency[b].append((a, length))
    return adjacency
