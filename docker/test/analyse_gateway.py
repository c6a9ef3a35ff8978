#!/usr/bin/env python3
"""Checks a load run through the gateway against the gateway's JSON access log.

    analyse_gateway.py balance  SUMMARY ACCESS_LOG UPSTREAM_A UPSTREAM_B
    analyse_gateway.py failover SUMMARY ACCESS_LOG FAILED_UPSTREAM SURVIVOR T_EVENT

SUMMARY is docker/test/load.py's summary; ACCESS_LOG the gateway's log in the glassbox_json
format of docker/nginx/glassbox.conf (one JSON object per line, $upstream_addr listing every
replica tried, $msec the time the request finished).

balance:  every request succeeded, and each upstream served at least 20% of them.
failover: every request succeeded (none lost, no connection error); every request that
          arrived 0.5 s or more after T_EVENT (the kill or SIGTERM) was answered by the
          survivor (requests in flight on a draining replica may finish there); the survivor answered requests after the event; how many requests the
          gateway retried on the survivor is reported.
"""

import json
import sys


def entries(path, ids):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            e = json.loads(line)
            if e["request_id"] in ids:
                out[e["request_id"]] = e
    return out


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def main():
    mode, summary_path, log_path = sys.argv[1:4]
    s = json.load(open(summary_path))
    print(f"load: {s['requests']} requests in {s['elapsed_s']} s, by status {s['by_status']}, errors {s['errors']}")
    if s["requests"] == 0:
        fail("no requests were sent")
    if s["failed"]:
        fail(f"{s['failed']} request(s) failed: {s['by_status']} {s['errors']}")
    ids = {f"load-{i}" for i in range(s["requests"] + 1000)}
    log = entries(log_path, ids)
    if len(log) < s["requests"]:
        fail(f"only {len(log)} of {s['requests']} requests are in the access log")
    final = lambda e: e["upstream_addr"].split(", ")[-1]
    if mode == "balance":
        a, b = sys.argv[4:6]
        n = {a: 0, b: 0}
        for e in log.values():
            n[final(e)] = n.get(final(e), 0) + 1
        print(f"served: {n}")
        if min(n[a], n[b]) < 0.2 * len(log):
            fail(f"unbalanced: {n}")
        print("ok: balanced")
        return
    failed_up, survivor, t_event = sys.argv[4], sys.argv[5], float(sys.argv[6])
    before = [e for e in log.values() if float(e["msec"]) <= t_event]
    after = [e for e in log.values() if float(e["msec"]) > t_event]
    # Requests that reached the gateway 0.5 s or more after the event (start = end - duration).
    late = [e for e in after if float(e["msec"]) - float(e["request_time"]) > t_event + 0.5]
    retried = [e for e in log.values() if ", " in e["upstream_addr"]]
    wrong = [e for e in late if final(e) != survivor]
    statuses = sorted({e["status"] for e in log.values()})
    print(f"before the event: {len(before)} requests; after: {len(after)} "
          f"(of which {sum(1 for e in after if final(e) == survivor)} by the survivor {survivor})")
    print(f"gateway statuses: {statuses}; retried on another replica: {len(retried)}")
    for e in retried[:5]:
        print(f"  {e['request_id']} {e['uri']}: tried {e['upstream_addr']} -> {e['upstream_status']}")
    if statuses != [200]:
        fail(f"gateway answered {statuses}")
    if not before:
        fail("no request finished before the event: the test did not load both replicas")
    if not late:
        fail("no request arrived after the event")
    if wrong:
        fail(f"{len(wrong)} requests after the event were answered by {failed_up}: {wrong[:3]}")
    print("ok: no request lost; the survivor carried the load")


if __name__ == "__main__":
    main()
