#!/usr/bin/env python3
"""map_render.py - a headless browser draws memalloc_map's SVG as it says.

    tests/map_render.py TEST_MAP WORKDIR

Runs TEST_MAP (tests/test_map.c) for its picture of a small heap, has
Debian's chromium take a screenshot of it (exit 77 when chromium is not
installed), decodes the PNG and checks that the browser drew it: the
screenshot has the picture's size, many colours, and the middle of each of
the first grid cells has the colour its rectangle names.
"""
import colorsys
import os
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib

NS = '{http://www.w3.org/2000/svg}'


def png_pixels(path):
    """(width, height, rows of (r, g, b)) of an 8-bit RGB or RGBA PNG."""
    data = open(path, 'rb').read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
    pos, idat, w = 8, b'', 0
    while pos < len(data):
        n, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b'IHDR':
            w, h, depth, ctype = struct.unpack('>IIBB', body[:10])
            assert depth == 8 and ctype in (2, 6), 'PNG colour type %d' % ctype
            bpp = 3 if ctype == 2 else 4
        elif kind == b'IDAT':
            idat += body
        pos += 12 + n
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows


def fill_rgb(fill):
    m = re.match(r'hsl\((\d+),(\d+)%,(\d+)%\)', fill)
    if m:
        r, g, b = colorsys.hls_to_rgb(int(m[1]) / 360, int(m[3]) / 100, int(m[2]) / 100)
        return tuple(round(v * 255) for v in (r, g, b))
    return tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5))


def main():
    exe, work = sys.argv[1:3]
    browser = shutil.which('chromium') or shutil.which('chromium-browser')
    if not browser:
        print('chromium is not installed: skipped')
        return 77
    os.makedirs(work, exist_ok=True)
    svg, png = os.path.join(work, 'render.svg'), os.path.join(work, 'render.png')
    subprocess.run([exe, svg, os.path.join(work, 'render-big.svg')], check=True,
                   stdout=subprocess.DEVNULL)
    root = ET.parse(svg).getroot()
    width, height = int(root.get('width')), int(root.get('height'))
    if os.path.exists(png):
        os.unlink(png)
    subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
                    '--force-device-scale-factor=1', '--screenshot=' + png,
                    '--window-size=%d,%d' % (width, height), 'file://' + os.path.abspath(svg)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
                   env=dict(os.environ, HOME=work))
    bad = 0
    w, h, rows = png_pixels(png)
    if (w, h) != (width, height):
        print('FAIL: screenshot %dx%d, picture %dx%d' % (w, h, width, height))
        bad += 1
    colours = {p for row in rows[::4] for p in row[::4]}
    if len(colours) < 8:
        print('FAIL: the screenshot has %d colours' % len(colours))
        bad += 1
    cells = [r for r in root.iter(NS + 'rect') if r.get('class') in ('chunk', 'large', 'gap')][:20]
    for r in cells:
        x = int(r.get('x')) + int(r.get('width')) // 2
        y = int(r.get('y')) + int(r.get('height')) // 2
        got, want = rows[y][x], fill_rgb(r.get('fill'))
        if max(abs(a - b) for a, b in zip(got, want)) > 12:
            print('FAIL: at (%d, %d) the browser drew %s, the %s rectangle is %s'
                  % (x, y, got, r.get('class'), want))
            bad += 1
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
