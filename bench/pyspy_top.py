#!/usr/bin/env python3
"""Summarise a py-spy `--format raw` profile (collapsed stacks) like `py-spy top`: the
functions with the most samples on-CPU by themselves (self) and with their callees (total).

    python bench/run.py fanout --subscribers 100 --profile /tmp/prof.txt
    python bench/pyspy_top.py /tmp/prof.txt [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import re

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--thread", help="only stacks of threads whose name contains this")
    args = p.parse_args()
    self_n: collections.Counter[str] = collections.Counter()
    total_n: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    with open(args.profile) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            if frames and frames[0].startswith("thread ("):
                threads[frames[0]] += n
                if args.thread and args.thread not in frames[0]:
                    continue
                frames = frames[1:]
            elif frames and frames[0].startswith("process "):
                frames = frames[1:]
            samples += n
            names = [short(fr) for fr in frames]
            if names:
                self_n[names[-1]] += n
            for name in set(names):
                total_n[name] += n
    print(f"{samples} samples")
    if threads:
        print("\nby thread:")
        for t, n in threads.most_common():
            print(f"  {100 * n / max(1, sum(threads.values())):5.1f}%  {t}")
    print(f"\ntop {args.top} by self time:")
    for name, n in self_n.most_common(args.top):
        print(f"  {100 * n / samples:5.1f}%  {name}")
    print(f"\ntop {args.top} by total time (with callees):")
    for name, n in total_n.most_common(args.top):
        print(f"  {100 * n / samples:5.1f}%  {name}")


if __name__ == "__main__":
    main()
