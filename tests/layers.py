#!/usr/bin/env python3
"""layers.py - src/ has no call or include cycle between its files.

    tests/layers.py SRC_DIR STATIC_LIB

Nodes are the files' stems (heap.c and heap.h are one node, "heap").  An
edge A -> B is an `#include "B.h"` in A.c or A.h, or a call from A's object
to a symbol B's object defines (nm's undefined symbols of A.o resolved
against the defined ones of the other members of the static library, so
calls through inline functions of a header count for the file that
includes it).  Prints the layers bottom up and exits 1 on a cycle.
"""
import collections
import os
import re
import subprocess
import sys


def main():
    src, lib = sys.argv[1], sys.argv[2]
    edges = collections.defaultdict(set)
    nodes = set()
    for name in os.listdir(src):
        stem, ext = os.path.splitext(name)
        if ext not in ('.c', '.h'):
            continue
        nodes.add(stem)
        with open(os.path.join(src, name)) as f:
            for inc in re.findall(r'^#include "([^"]+)\.h"', f.read(), re.M):
                if inc != stem and os.path.exists(os.path.join(src, inc + '.h')):
                    edges[stem].add(inc)
    out = subprocess.run(['nm', '-A', lib], capture_output=True, text=True, check=True).stdout
    defined, undefined = {}, collections.defaultdict(set)
    for line in out.splitlines():
        m = re.match(r'^[^:]*:([^:]+)\.c\.o:\s*(?:[0-9a-f]+\s+)?([A-Za-z])\s+(\S+)$', line)
        if not m:
            continue
        obj = os.path.basename(m.group(1)).split('src_')[-1]
        kind, sym = m.group(2), m.group(3)
        if kind == 'U':
            undefined[obj].add(sym)
        elif kind.isupper():
            defined[sym] = obj
    for obj, syms in undefined.items():
        for sym in syms:
            to = defined.get(sym)
            if to and to != obj:
                edges[obj].add(to)
    # Kahn's algorithm: what is left at the end lies on a cycle.
    nodes |= set(edges) | {b for bs in edges.values() for b in bs}
    below = {n: set(edges[n]) for n in nodes}
    layers, done = [], set()
    while len(done) < len(nodes):
        ready = sorted(n for n in nodes - done if below[n] <= done)
        if not ready:
            left = sorted(nodes - done)
            print('cycle among: ' + ' '.join(left))
            for n in left:
                print('  %s -> %s' % (n, ' '.join(sorted(below[n] - done))))
            return 1
        layers.append(ready)
        done |= set(ready)
    for i, layer in enumerate(layers):
        print('%d: %s' % (i, ' '.join('%s (-> %s)' % (n, ' '.join(sorted(edges[n])) or '-')
                                      for n in layer)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
