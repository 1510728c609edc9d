#!/usr/bin/env python3
"""Prints the medians of the last criterion run of the given benchmark ids, and ratios between them.

usage: scripts/bench-report.py GROUP/ID ... [--ratio A/B ...] [--throughput BYTES]
Reads target/criterion/GROUP/ID/new/estimates.json (criterion's own output).
"""
import json
import os
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")


def median_ns(bench):
    group, name = bench.split("/", 1)
    with open(os.path.join(root, group, name, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]


def fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


args = sys.argv[1:]
ratios, ids, throughput = [], [], None
while args:
    a = args.pop(0)
    if a == "--ratio":
        ratios.append(args.pop(0))
    elif a == "--throughput":
        throughput = int(args.pop(0))
    else:
        ids.append(a)
print("| benchmark | median |" + (" throughput |" if throughput else ""))
print("|---|---|" + ("---|" if throughput else ""))
for b in ids:
    m = median_ns(b)
    extra = f" {throughput / m:.2f} GB/s |" if throughput else ""
    print(f"| `{b}` | {fmt(m)} |{extra}")
for r in ratios:
    a, b = r.split(":")
    print(f"\nratio `{a}` / `{b}` = {median_ns(a) / median_ns(b):.2f}")
