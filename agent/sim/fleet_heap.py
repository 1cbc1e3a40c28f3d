"""The collector in a fleet's process: what lives as long as the fleet is walked by no collection.

Every full collection walks every tracked object outside the permanent generation, and a fleet's
devices (engines, clients, stores, paho clients: a few hundred objects each) live until the
fleet ends, so each full collection cost O(fleet) and a thing cost more the bigger its fleet
(timed with `gc.callbacks` in `sim fleet`: 1,000 things, 7 full collections of 0.19 s; 2,000, 13
of 0.6 s). `FleetHeap.building` therefore connects with the collector paused and, once every
device is up, moves everything to the permanent generation (`gc.freeze`) before the collector
runs again. It does not collect first: connecting leaves next to no cyclic garbage (5 objects of
305,000 at 1,000 things), and that one full pass cost 0.39 s of CPU at 1,000 things and more per
object as the heap grows (1.3 -> 1.6 us at 3,000), a fifth of a quiet machine's connect time.

Two more things made a thing's rollout cost more in a bigger fleet (issue 18, round 14: 5,000
things, collections timed by their thread's CPU clock in `gc.callbacks`):

* Looking for work leaves ~60 objects a device (its records, its client's state), in no frozen
  generation: 300,000 at 5,000 things, walked by every full collection of the rollout.
  `FleetHeap.looked` freezes them too once every device has looked (garbage among them: 2 of
  1,479 objects at 20 things).
* A rollout's objects live as long as a device's job, and with thousands of jobs at once that
  is long enough to outlive two young collections at Python's first threshold (700
  allocations): promoted to the oldest generation, they made Python's rule (a full collection
  once the promoted objects reach a quarter of the survivors of the last one) fire at nearly
  every tenth middle collection, though most of them had died since. 5,000 things: 10 full
  collections, 5.9 s of the loop's CPU (1.2 ms a thing, 0.28 at 1,000). The fleet raises the
  first threshold to `YOUNG_THRESHOLD`: a young collection walks more at once but as many
  objects in all (each is walked while young, then dies or is promoted), fewer of the jobs'
  objects are promoted, and the rollout of 5,000 things made no full collection (61 young ones,
  5 middle; 1.9 s of CPU in all).

The middle generation then still grew with the fleet (round 15, counted in the fleet process,
loaded machine): a job's objects live as long as the emulator's queue in front of it, so at
5,000 things nearly all of them outlived their young collection and were walked again by a
middle collection every ten young ones (209 objects a thing against 116 at 1,000; collections
0.49 ms of CPU a thing against 0.26). With the middle threshold at `MIDDLE_THRESHOLD` a
rollout of 5,000 things made no middle collection (0.25 ms a thing in all, against 0.41 in the
same tree at Python's 10): the objects it promoted died before one came. Young collections alone
still cost a thing more there than at 1,000 (0.25 against 0.15-0.18 ms).

`FleetHeap.release` puts Python's thresholds back and gives the objects back (`gc.unfreeze`) so
the closed devices' cycles can be collected.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 10_000
"""The collector's first threshold while a fleet is up (Python's default: 700)."""
MIDDLE_THRESHOLD = 100
"""Young collections between two middle ones while a fleet is up (Python's default: 10)."""


class FleetHeap:
    """The collector's settings for one fleet, from `building` to `release`."""

    def __init__(self) -> None:
        self._thresholds: tuple[int, int, int] | None = None
        """Python's thresholds before the fleet raised the first; None: nothing held."""

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """The collector paused while the devices are made, then everything frozen and the
        first two thresholds raised before it runs again (even when making them failed: `release`
        undoes it)."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            gc.freeze()
            if self._thresholds is None:
                self._thresholds = gc.get_threshold()
                gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, self._thresholds[2])
            if collecting:
                gc.enable()

    def looked(self) -> None:
        """Every device has looked for work: freeze what that left (see above)."""
        if self._thresholds is not None:
            gc.freeze()

    def release(self) -> None:
        """The devices are closed: Python's thresholds back, and every object collectable."""
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
            gc.unfreeze()


__all__ = ["MIDDLE_THRESHOLD", "YOUNG_THRESHOLD", "FleetHeap"]
