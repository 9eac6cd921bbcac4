#!/bin/sh
# tests/man_lint.sh VERSION PAGE... - the man pages are well-formed, and
# name the project's VERSION in their title line: mandoc's lint
# at warning level, or groff's warnings (-ww) where mandoc is missing; 77
# (skipped) with neither.  Any message fails.
version=$1
shift
if command -v mandoc >/dev/null; then
    out=$(mandoc -T lint -W warning "$@" 2>&1) || { echo "$out"; exit 1; }
elif command -v groff >/dev/null; then
    out=$(groff -ww -man -z "$@" 2>&1)
else
    echo "neither mandoc nor groff: skipped"
    exit 77
fi
[ -z "$out" ] || { echo "$out"; exit 1; }
for page in "$@"; do
    grep -q "^\.TH .*\"memalloc $version\"" "$page" || { echo "$page: not memalloc $version"; exit 1; }
done
