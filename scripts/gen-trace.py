#!/usr/bin/env python3
"""Generates a synthetic invocation trace in the Azure Functions 2021 format
(app,func,end_timestamp,duration; seconds from the trace start), shaped by the statistics
published for the Azure Functions traces (Shahrad et al., "Serverless in the Wild", ATC'20):

- invocation rates are heavy-tailed: of the functions that are invoked at all, about 19 % are
  invoked at least once a minute and most of the rest between once an hour and once a minute
  (we draw rates log-uniformly within those two classes);
- triggers: about 55 % HTTP, 16 % timer, 15 % queue/event, the rest other; timer-triggered
  functions fire periodically (periods of 1, 2 or 5 minutes), the others arrive as Poisson
  processes, with a burst factor for queue/event triggers (arrivals in groups of 1-4);
- execution times are log-normal with a median around 0.1-1 s (informational here: the replay
  runs real workloads whose durations are their own).

Every function invoked in the window is kept (the replay needs at least one call per function);
functions drawing no call in the window get one at a random time.

Usage: scripts/gen-trace.py [--functions 16] [--minutes 10] [--seed 1] > trace.csv
"""
import argparse
import math
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--functions", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-rate", type=float, default=12.0, help="calls per minute of the busiest class")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    horizon = args.minutes * 60.0
    rows = []
    for i in range(args.functions):
        app, func = f"app{i // 2}", f"func{i}"
        trigger = rng.choices(["http", "timer", "queue", "other"], weights=[55, 16, 15, 14])[0]
        frequent = rng.random() < 0.19
        # Calls per minute: [1, max] for the frequent class, [1/60, 1] for the others.
        lo, hi = (1.0, args.max_rate) if frequent else (1.0 / 60.0, 1.0)
        rate = math.exp(rng.uniform(math.log(lo), math.log(hi))) / 60.0
        starts = []
        if trigger == "timer":
            period = rng.choice([60.0, 120.0, 300.0]) if not frequent else 60.0 / max(1, round(rate * 60))
            t = rng.uniform(0, period)
            while t < horizon:
                starts.append(t)
                t += period
        else:
            burst = rng.randint(1, 4) if trigger == "queue" else 1
            t = rng.expovariate(rate / burst)
            while t < horizon:
                for k in range(burst):
                    starts.append(t + k * 0.05)
                t += rng.expovariate(rate / burst)
        if not starts:
            starts.append(rng.uniform(0, horizon))
        median = rng.choice([0.1, 0.3, 1.0])
        for s in starts:
            d = min(60.0, rng.lognormvariate(math.log(median), 0.8))
            rows.append((s + d, app, func, d))
    rows.sort()
    print("app,func,end_timestamp,duration")
    for end, app, func, d in rows:
        print(f"{app},{func},{end:.3f},{d:.3f}")


if __name__ == "__main__":
    main()
