#!/usr/bin/env python3
"""map_check.py - memalloc_map's SVG: well-formed, complete, to scale.

    tests/map_check.py TEST_MAP MEMALLOC_CMD LIBMEMALLOC WORKDIR

Runs TEST_MAP (tests/test_map.c) with MEMALLOC_MAP set, so that it writes
three pictures: one of a heap with every kind of unit, one of a heap past
1 GiB, and the one MEMALLOC_MAP asks for at exit.  Then runs
`memalloc --map FILE bash -c ...` for the command's option.  Each picture
must parse as XML, and the bytes its grid's rectangles stand for must add
up to the heap's size in the statistics; the first must show chunks, large
blocks, free space given back, free space resident and a gap, with a
legend, the totals and the program's name in the title; the big one must
stay a readable size.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

NS = '{http://www.w3.org/2000/svg}'
OURS = ('chunk', 'large', 'held', 'free-resident', 'free-returned')
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print('FAIL: ' + what)


def load(path):
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        check(False, '%s: not well-formed XML: %s' % (path, e))
        return None


def rects(root):
    return [r for r in root.iter(NS + 'rect') if r.get('class') in OURS + ('gap',)]


def grid_bytes(root):
    return sum(int(r.get('data-bytes')) for r in rects(root) if r.get('class') in OURS)


def texts(root):
    return [''.join(t.itertext()) for t in root.iter(NS + 'text')]


def check_sum(path, root, want):
    got = grid_bytes(root)
    check(got == want, '%s: the rectangles add up to %d bytes, the statistics say %d'
          % (path, got, want))
    check(int(root.get('data-heap-bytes')) == want,
          '%s: data-heap-bytes %s, the statistics %d' % (path, root.get('data-heap-bytes'), want))


def main():
    exe, cmd, lib, work = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    small, big, at_exit = (os.path.join(work, n) for n in ('small.svg', 'big.svg', 'exit.svg'))
    env = dict(os.environ, MEMALLOC_MAP=at_exit)
    out = subprocess.run([exe, small, big], env=env, capture_output=True, text=True)
    check(out.returncode == 0, 'test_map exited %d: %s' % (out.returncode, out.stderr))
    heap = dict(line.split() for line in out.stdout.splitlines())

    root = load(small)
    if root is not None:
        check_sum(small, root, int(heap.get(small, -1)))
        kinds = {r.get('class') for r in rects(root)}
        for k in ('chunk', 'large', 'free-returned', 'free-resident', 'gap'):
            check(k in kinds, '%s: no %s units drawn (has %s)' % (small, k, sorted(kinds)))
        shades = {r.get('fill') for r in rects(root) if r.get('class') == 'chunk'}
        check(len(shades) >= 3, '%s: chunks all in %d colours' % (small, len(shades)))
        t = texts(root)
        check(any('test_map' in s and 'UTC' in s for s in t), '%s: no title with the program' % small)
        check(any(s.startswith('heap bytes now') for s in t), '%s: no totals' % small)
        check(any('given back' in s for s in t), '%s: no legend' % small)
        check(root.find(NS + 'g[@class="legend"]') is not None, '%s: no legend group' % small)

    root = load(big)
    if root is not None:
        check_sum(big, root, int(heap.get(big, -1)))
        w, h = int(root.get('width')), int(root.get('height'))
        check(w <= 1400 and h <= 1200, '%s: %d x %d pixels' % (big, w, h))
        check(len(rects(root)) < 20000, '%s: %d rectangles' % (big, len(rects(root))))
        cells = {int(r.get('height')) for r in rects(root)}
        check(min(cells) >= 4, '%s: cells of %d pixels' % (big, min(cells)))

    root = load(at_exit)
    if root is not None:
        check(grid_bytes(root) == int(root.get('data-heap-bytes')),
              '%s: the grid does not add up to the heap' % at_exit)

    by_cmd = os.path.join(work, 'command.svg')
    if os.path.exists(by_cmd):
        os.unlink(by_cmd)
    # bash forks ls, which inherits MEMALLOC_MAP and exits first: the file
    # must still be one whole picture, and no FILE.PID may be left.
    out = subprocess.run(['sh', cmd, '--map', by_cmd, 'bash', '-c', 'ls / >/dev/null; true'],
                         env=dict(os.environ, MEMALLOC_LIB=lib), capture_output=True, text=True)
    check(out.returncode == 0, 'memalloc --map exited %d: %s' % (out.returncode, out.stderr))
    left = [f for f in os.listdir(work) if f.startswith('command.svg.')]
    check(not left, 'temporary maps left behind: %s' % left)
    root = load(by_cmd)
    if root is not None:
        check(grid_bytes(root) == int(root.get('data-heap-bytes')),
              '%s: the grid does not add up to the heap' % by_cmd)
        check(any(s.startswith('memalloc heap of ') for s in texts(root)), '%s: no title' % by_cmd)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
