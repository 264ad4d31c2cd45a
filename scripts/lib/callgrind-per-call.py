#!/usr/bin/env python3
"""Where the instructions per call go, from callgrind runs of N and 2N calls
(scripts/instructions-per-call.sh keeps them under
target/instructions-per-call/BINARY/sSTREAMS/callgrind-repR-{N,2N}/).

    scripts/lib/callgrind-per-call.py --calls N A_N.out A_2N.out [B_N.out B_2N.out]

Per function (self cost, callgrind_annotate's exclusive Ir, summed over the
files a function's inlined code is attributed to): (Ir(2N) - Ir(N)) / N.
Prints the per-call Ir by crate (the first path segment of the function's
name; C functions by their name's object, e.g. libc) and, with two binaries
(A then B), the functions whose per-call Ir differs most, B - A.
"""

import argparse
import re
import subprocess
from collections import defaultdict

LINE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.*?)(?:\s+\[(.*)\])?$")


def functions(path):
    """{function: exclusive Ir} of one callgrind.out."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    costs, objects = defaultdict(int), {}
    started = False
    for line in out.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        m = LINE.match(line)
        if not m:
            continue
        ir, where, obj = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
        # "file:function": the file may itself hold no colon but the
        # function does (`a::b`), so split at the first ":" before a name.
        name = where.split(":", 1)[1] if ":" in where and not where.startswith(":") else where
        costs[name] += ir
        if obj:
            objects[name] = obj.rsplit("/", 1)[-1]
    return costs, objects


def crate(name, objects):
    bare = name.lstrip("<&*")
    if "::" in bare:
        return bare.split("::", 1)[0]
    obj = objects.get(name, "")
    return f"C ({obj})" if obj else "C"


def per_call(n_out, n2_out, calls):
    a, objs = functions(n_out)
    b, objs2 = functions(n2_out)
    objs.update(objs2)
    names = set(a) | set(b)
    return {k: (b.get(k, 0) - a.get(k, 0)) / calls for k in names}, objs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, required=True, help="N")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("outs", nargs="+", help="N.out 2N.out [N.out 2N.out]")
    args = p.parse_args()
    if len(args.outs) not in (2, 4):
        p.error("two callgrind.out files per binary, one or two binaries")
    runs = [per_call(args.outs[i], args.outs[i + 1], args.calls) for i in range(0, len(args.outs), 2)]
    by_crate = []
    for costs, objs in runs:
        groups = defaultdict(float)
        for name, ir in costs.items():
            groups[crate(name, objs)] += ir
        by_crate.append(groups)
    keys = sorted(set().union(*by_crate), key=lambda k: -max(abs(g.get(k, 0)) for g in by_crate))
    head = "| crate | " + " | ".join(["A", "B", "B - A"][: 1 if len(runs) == 1 else 3]) + " |"
    print(head)
    print("|---|" + "---:|" * (1 if len(runs) == 1 else 3))
    total = [sum(g.values()) for g in by_crate]
    for k in keys:
        vals = [g.get(k, 0) for g in by_crate]
        if max(abs(v) for v in vals) < 50:
            continue
        cells = [f"{v:.0f}" for v in vals] + ([f"{vals[1] - vals[0]:+.0f}"] if len(vals) == 2 else [])
        print(f"| {k} | " + " | ".join(cells) + " |")
    cells = [f"{t:.0f}" for t in total] + ([f"{total[1] - total[0]:+.0f}"] if len(total) == 2 else [])
    print("| **all** | " + " | ".join(cells) + " |")
    if len(runs) == 2:
        (a, _), (b, _) = runs
        diff = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
        print(f"\nfunctions whose Ir per call differs most (B - A; A, B):")
        for k in sorted(diff, key=lambda k: -abs(diff[k]))[: args.top]:
            print(f"{diff[k]:+9.0f}  {a.get(k, 0):9.0f} {b.get(k, 0):9.0f}  {k[:150]}")


if __name__ == "__main__":
    main()
