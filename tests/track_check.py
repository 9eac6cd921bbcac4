#!/usr/bin/env python3
"""track_check.py - memcheck and ASan see the bugs in memalloc's blocks.

    tests/track_check.py memcheck|asan TEST_TRACK [TEST_TRACK_STD]

Runs TEST_TRACK (tests/test_track.c) once per bug, under valgrind's
memcheck (a -Dvalgrind=true build: TEST_TRACK is plain) or as it is (a
-Db_sanitize=address build: TEST_TRACK is instrumented), and checks the
tool's report: the error, the block's size, where it was allocated and
freed, the program's line.  The clean run must draw no report at all.
TEST_TRACK_STD is the same program linked with libmemalloc: its malloc and
free must be memalloc's under memcheck (run with
--soname-synonyms=somalloc=nouserintercepts, which keeps memcheck's own
malloc out of every library but libc), and a use after free through them
is reported from memalloc's free.
ASan has no leak case: LeakSanitizer only knows the blocks of ASan's own
allocator, and has no interface through which another could describe its.
"""
import re
import subprocess
import sys

# mode -> what each tool's report must hold (regular expressions)
MEMCHECK = {
    'uaf': [r'Invalid read of size 1', r'is 8 bytes inside a block of size 100 free\'d',
            r'by 0x[0-9A-F]+: main \(test_track\.c:\d+\)', r'memalloc_free', r'Block was alloc\'d at',
            r'memalloc_malloc'],
    'overflow': [r'Invalid read of size 1', r'is 0 bytes after a block of size 100 alloc\'d',
                 r'memalloc_malloc'],
    'leak': [r'77 bytes in 1 blocks are definitely lost', r'memalloc_malloc',
             r'by 0x[0-9A-F]+: main \(test_track\.c:\d+\)'],
    'clean': [r'ERROR SUMMARY: 0 errors'],
    'std-uaf': [r'is 8 bytes inside a block of size 100 free\'d', r'by 0x[0-9A-F]+: free \(api_tracked\.c',
                r'by 0x[0-9A-F]+: malloc \(api_tracked\.c'],
}
ASAN = {
    'uaf': [r'ERROR: AddressSanitizer: use-after-poison', r'READ of size 1',
            r'#0 0x[0-9a-f]+ in main .*test_track\.c:\d+'],
    'overflow': [r'ERROR: AddressSanitizer: use-after-poison', r'READ of size 1',
                 r'#0 0x[0-9a-f]+ in main .*test_track\.c:\d+'],
    'clean': [],
}


def main():
    tool, exe = sys.argv[1], sys.argv[2]
    std_exe = sys.argv[3] if len(sys.argv) > 3 else None
    failures = 0
    for mode, want in (MEMCHECK if tool == 'memcheck' else ASAN).items():
        if mode == 'std-uaf' and not std_exe:
            continue
        if mode == 'std-uaf':
            cmd = ['valgrind', '--soname-synonyms=somalloc=nouserintercepts', '--error-exitcode=99',
                   std_exe, mode]
            env = None
        elif tool == 'memcheck':
            cmd = ['valgrind', '--leak-check=full', '--error-exitcode=99', exe, mode]
            env = None
        else:
            cmd = [exe, mode]
            env = {'ASAN_OPTIONS': 'detect_leaks=0'}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        report = r.stderr
        bad = mode == 'clean' and r.returncode != 0 or mode != 'clean' and r.returncode == 0
        missing = [w for w in want if not re.search(w, report)]
        # The address the report names is the block's byte 8 (uaf) or 100.
        block = re.search(r'block (0x[0-9a-f]+)', r.stdout)
        if mode in ('uaf', 'overflow', 'std-uaf'):
            at = '%x' % (int(block.group(1), 16) + (100 if mode == 'overflow' else 8)) if block else '?'
            named = (r'Address 0x0*%s is' if tool == 'memcheck' else
                     r'use-after-poison on address 0x0*%s ') % at
            if not re.search(named, report, re.I):
                missing.append('the address 0x%s' % at)
        if bad or missing:
            failures += 1
            print('FAIL: %s %s: exit %d, missing %s\n%s' % (tool, mode, r.returncode, missing,
                                                           report[-3000:]))
        else:
            print('ok: %s %s' % (tool, mode))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
