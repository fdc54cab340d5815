"""One iteration: dynamic requests on an elastic optical network, counted when blocked.

Each link's spectrum is an int bit mask (bit i set = slot i in use): the union over a
path's links is a few ORs, and first fit is a few shifts, whatever c_band is.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_right
from itertools import accumulate

from fusion_runner.refsim.settings import Settings
from fusion_runner.refsim.topology import Network, Route

Departure = tuple[float, int, Route]  # time, slot block, links


def blocked_requests(
    settings: Settings, network: Network, erlang: float, rng: random.Random
) -> int:
    """Run num_requests Poisson arrivals at `erlang` from an empty network; count the blocked.

    Arrivals come at rate erlang / holding_time between uniform distinct node pairs and
    hold for an exponential time of mean holding_time. A request takes the first of its
    k shortest routes with a contiguous free block (first fit) on every link.
    """
    arrival_rate, departure_rate = erlang / settings.holding_time, 1.0 / settings.holding_time
    cumulative = _cumulative([demand.probability for demand in settings.demands])
    widths = [demand.slots for demand in settings.demands]
    routes, nodes, full = network.routes, network.num_nodes, (1 << settings.c_band) - 1
    occupancy = [0] * len(network.links)
    departures: list[Departure] = []
    expovariate, uniform, randrange = rng.expovariate, rng.random, rng.randrange
    now, blocked = 0.0, 0
    for _ in range(settings.num_requests):
        now += expovariate(arrival_rate)
        while departures and departures[0][0] <= now:
            _, block, links = heapq.heappop(departures)
            for link in links:
                occupancy[link] ^= block
        source, target = randrange(nodes), randrange(nodes - 1)
        target += target >= source
        width = widths[bisect_right(cumulative, uniform())]
        placed = place(routes[source * nodes + target], occupancy, width, full)
        if placed is None:
            blocked += 1
            continue
        links, block = placed
        for link in links:
            occupancy[link] |= block
        heapq.heappush(departures, (now + expovariate(departure_rate), block, links))
    return blocked


def place(
    routes: tuple[Route, ...], occupancy: list[int], width: int, full: int
) -> tuple[Route, int] | None:
    """The first route with room and its first-fit block, or None when blocked."""
    for links in routes:
        used = 0
        for link in links:
            used |= occupancy[link]
        block = first_fit(used, width, full)
        if block:
            return links, block
    return None


def first_fit(used: int, width: int, full: int) -> int:
    """The lowest block of `width` contiguous free slots as a mask, or 0 if none fits."""
    run = ~used & full  # bit p set: slots p .. p + span - 1 are free
    span = 1
    while span < width and run:
        shift = min(span, width - span)
        run &= run >> shift
        span += shift
    if not run:
        return 0
    start = (run & -run).bit_length() - 1
    return ((1 << width) - 1) << start


def _cumulative(probabilities: list[float]) -> list[float]:
    """Upper bounds for bisect_right on random() in [0, 1); the last is exactly 1."""
    total = sum(probabilities)
    bounds = [value / total for value in accumulate(probabilities)]
    bounds[-1] = 1.0
    return bounds
