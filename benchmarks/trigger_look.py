"""What the arrival triggers pay per poll when the inbox holds nothing (issue 8): one look through the Airflow
Connection ``csp_sftp`` with the provider's asyncssh hook, awaited on the event loop (``arrival.look``, what the
triggers do now), beside the same look through the project's own paramiko client run in a thread (what they did
before: ``sftp.connect_observatory`` and ``intake.find_ready_supplies`` under ``asyncio.to_thread``).

Each way runs in fresh Python processes, the two ways interleaved round by round (the machine is shared: a round is
one process of each, back to back). Per process, as ``end_to_end.py`` measures its fixed cost "a poll that finds
nothing": importing ``csp_observatory.arrival``, the first look (it also imports what the look needs and reads the
settings and schemas) and the next looks (each a new SSH login and one listing, as the triggers do; the median of
``--looks``). Both ways read the settings and schemas on every look, as the triggers do.

It uses the demo's services (``.run/observatory.yaml``, or ``CSP_CONFIG``), whose ``csp_sftp`` connection it defines
from those settings (``connections.ensure_env``); the police inbox must hold nothing (checked: a look that finds
anything is reported, not timed).

    . .run/airflow.env && .venv/bin/python benchmarks/trigger_look.py [--rounds 5] [--looks 10]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

FEED = "police_recorded_crime"
WAYS = {"paramiko": "project's paramiko client in a thread (before)",
        "hook": "SFTPHookAsync on the event loop (after)"}


def _own_client_look(feed: str, previous: dict[str, int]) -> Any:
    """The triggers' look before issue 8's change: the settings' paramiko client, one listing read by intake."""
    from csp_observatory import arrival, intake, sftp
    from csp_observatory.config import load_settings
    from csp_observatory.schema_loading import schema_for

    settings = load_settings()
    with sftp.connect_observatory(settings) as client:
        ready = intake.find_ready_supplies(client, schema_for(feed), settings, previous)
    return arrival.summarise(ready, previous)


def child(way: str, looks: int) -> dict[str, Any]:
    """Time one way in this (fresh) process: import, first look, then ``looks`` more."""
    from csp_observatory import connections
    from csp_observatory.config import load_settings

    connections.ensure_env(load_settings())
    for name in ("paramiko", "asyncssh"):        # their INFO lines per login are not what is measured
        logging.getLogger(name).setLevel(logging.WARNING)
    started = time.perf_counter()
    from csp_observatory import arrival

    imported = time.perf_counter() - started

    async def one(previous: dict[str, int]) -> Any:
        if way == "hook":
            return await arrival.look(FEED, previous)
        return await asyncio.to_thread(_own_client_look, FEED, previous)

    async def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        found = await one({})
        first = time.perf_counter() - t0
        nexts = []
        for _ in range(looks):
            t0 = time.perf_counter()
            found = await one(found.sizes)
            nexts.append(time.perf_counter() - t0)
        return {"import_s": imported, "first_look_s": first, "next_look_s": statistics.median(nexts),
                "next_min_s": min(nexts), "found": bool(found.periods or found.strays)}

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per way (interleaved)")
    parser.add_argument("--looks", type=int, default=10, help="next looks per process (the median is shown)")
    parser.add_argument("--child", choices=sorted(WAYS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.looks)))
        return 0
    import os

    print(f"# One look at an empty inbox ({FEED}), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.rounds} fresh processes per way, {args.looks} next looks each")
    results: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
    for r in range(args.rounds):
        for way in WAYS:
            out = subprocess.run([sys.executable, __file__, "--child", way, "--looks", str(args.looks)],
                                 check=True, capture_output=True, text=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            if got["found"]:
                print("the inbox is not empty: these figures are not for a look that finds nothing", flush=True)
                return 1
            results[way].append(got)
            print(f"round {r + 1} {way:8}: import {got['import_s']:.2f} s, first look {got['first_look_s']:.3f} s, "
                  f"next look {got['next_look_s']:.3f} s (min {got['next_min_s']:.3f})", flush=True)
    print("\nmedian over the rounds:")
    for way, label in WAYS.items():
        med = {k: statistics.median(g[k] for g in results[way]) for k in ("import_s", "first_look_s", "next_look_s")}
        print(f"  {label}: import {med['import_s']:.2f} s, first look {med['first_look_s']:.3f} s, "
              f"next look {med['next_look_s']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
