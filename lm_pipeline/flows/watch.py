"""Arrival as an event: a short-schedule flow that looks under ct.watch and announces each new,
complete drop as the Prefect event `lmp.drop.arrived`. The continuous-training deployment's
trigger (flows/deploy.py) starts a cycle on it, on the server's worker:

    lmp deploy --continuous          # the watcher every ct.watch_interval_s, and the triggered cycle
    prefect worker start --pool lm-pipeline

The watcher only looks and announces (it imports no model code, and reads only the files that are
new or changed since its last run: ct.state_dir/digests.json remembers the others' digests by
size and modification time, or ETag); the cycle takes every pending drop in order, so two
announcements that start two runs cost the second one nothing. A drop the ledger has not taken
ct.announce_again_s after its announcement is announced again: events are not replayed, and a run
can fail before it takes its drop.
"""

from __future__ import annotations

import contextlib
import time

from prefect import flow, get_run_logger
from prefect.events import emit_event

from lm_pipeline.config import Config, load_config
from lm_pipeline.continuous.drops import Announcements, Drop, FileDigests, Ledger, find_drops

DROP_ARRIVED = "lmp.drop.arrived"
RESOURCE_PREFIX = "lmp.drop."


@flow(name="lm-ct-watch", log_prints=True)
def watch_drops(project_dir: str = ".") -> list[str]:
    """Announce the pending drops under ct.watch that are due; returns their names."""
    with contextlib.chdir(project_dir):
        cfg = load_config("params.yaml")
        state, now = cfg.ct.state_dir, time.time()
        announcements, digests = Announcements(state), FileDigests(state)
        pending = pending_drops(cfg, Ledger(state), digests)
        digests.save()
        due = announcements.due(pending, cfg.ct.announce_again_s, now)
        announced = [drop for drop in due if announce(drop)]
        announcements.record(announced, now)
    get_run_logger().info("%d new drop(s) announced under %s: %s", len(announced), cfg.ct.watch,
                          ", ".join(d.name for d in announced) or "none")
    return [d.name for d in announced]


def pending_drops(cfg: Config, ledger: Ledger, digests: FileDigests | None = None) -> list[Drop]:
    """The complete drops under ct.watch that the ledger has not seen to an end, those claimed
    before first, then in name order (`digests`: the watcher's memory of the files it read before)."""
    drops, waiting = find_drops(cfg.ct.watch, digests)
    for name in waiting:
        get_run_logger().info("drop %s is not complete yet (no _SUCCESS, or its manifest does not "
                              "match)", name)
    return ledger.pending(drops)


def announce(drop: Drop) -> bool:
    """Queue the event (Prefect sends it, at the latest when the flow run's process exits);
    False when Prefect has no events client to queue it on: the next run tries again."""
    event = emit_event(event=DROP_ARRIVED,
                       resource={"prefect.resource.id": f"{RESOURCE_PREFIX}{drop.digest}",
                                 "prefect.resource.name": drop.name},
                       payload={"drop": drop.name, "url": drop.url, "digest": drop.digest,
                                "files": drop.files})
    if event is None:
        get_run_logger().warning("drop %s: the event could not be queued; announced again next run",
                                 drop.name)
    return event is not None
