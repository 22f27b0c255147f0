#!/usr/bin/env python3
"""Which pages of its own binary a running process holds, and whose code they are.

    scripts/rss-map.py PID [UNSTRIPPED_BINARY]

Reads /proc/PID/maps and /proc/PID/pagemap (bit 63: the page is mapped in
this process) for every mapping of the process's executable, and reports:

- per ELF section: resident KiB of its size, from the program headers;
- how the resident pages lie: the number of contiguous runs and their
  lengths (a fault maps its neighbours too: fault-around and large folios);
- with an unstripped build of the same binary (`CARGO_PROFILE_RELEASE_STRIP=none`),
  resident .text by crate, from `nm`'s symbol sizes, so that "what the binary
  touches" has names.

It only reads; it needs the right to read the process's pagemap (the same
user, or root).
"""

import bisect
import collections
import os
import re
import struct
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")


def maps_of(pid, exe):
    rows = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == exe:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                rows.append((lo, hi, int(parts[2], 16), parts[1]))
    return rows


def resident(pid, lo, hi):
    """Addresses of the mapped pages in [lo, hi)."""
    out = []
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(lo // PAGE * 8)
        data = f.read((hi - lo) // PAGE * 8)
    for i in range(len(data) // 8):
        (entry,) = struct.unpack_from("<Q", data, i * 8)
        if entry >> 63 & 1:
            out.append(lo + i * PAGE)
    return out


def segments(binary):
    """PT_LOAD rows (offset, vaddr, filesz) and sections (name, vaddr, size)."""
    loads, sections = [], []
    text = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout
    for line in text.splitlines():
        p = line.split()
        if p and p[0] == "LOAD":
            loads.append((int(p[1], 16), int(p[2], 16), int(p[4], 16)))
    text = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True).stdout
    for line in text.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m and int(m.group(2), 16):
            sections.append((m.group(1), int(m.group(2), 16), int(m.group(3), 16)))
    return loads, sections


def to_vaddr(loads, offset):
    for off, vaddr, size in loads:
        if off <= offset < off + size:
            return vaddr + offset - off
    return None


def crate_of(name):
    """The crate a demangled Rust symbol belongs to, best effort."""
    name = name.lstrip("<&*(")
    if name.startswith("dyn "):
        name = name[4:]
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    if m:
        return m.group(1)
    return "(other: C, std glue, unnamed)"


def symbols(binary):
    out = subprocess.run(
        ["nm", "-S", "-C", "--defined-only", binary], capture_output=True, text=True
    ).stdout
    rows = []
    for line in out.splitlines():
        p = line.split(None, 3)
        if len(p) == 4 and p[2] in "tTwW":
            rows.append((int(p[0], 16), int(p[1], 16), p[3]))
    rows.sort()
    return rows


def main():
    pid = sys.argv[1]
    exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    binary = sys.argv[2] if len(sys.argv) > 2 else exe
    loads, sections = segments(binary)
    pages = []  # ELF vaddrs of resident pages
    for lo, hi, off, perms in maps_of(pid, exe):
        for addr in resident(pid, lo, hi):
            v = to_vaddr(loads, off + addr - lo)
            if v is not None:
                pages.append(v)
    pages.sort()
    total = len(pages) * PAGE
    print(f"pid {pid} ({exe}): {total / 1024:.0f} KiB of the binary mapped")
    for name, vaddr, size in sections:
        lo = bisect.bisect_left(pages, vaddr - vaddr % PAGE)
        hi = bisect.bisect_left(pages, vaddr + size)
        if size >= 64 * 1024 or hi > lo:
            print(f"  {name:20} {(hi - lo) * PAGE / 1024:8.0f} of {size / 1024:8.0f} KiB")
    runs, start, prev = [], None, None
    for p in pages:
        if prev is None or p != prev + PAGE:
            if start is not None:
                runs.append((prev - start) // PAGE + 1)
            start = p
        prev = p
    if start is not None:
        runs.append((prev - start) // PAGE + 1)
    if runs:
        runs.sort()
        print(
            f"  {len(runs)} runs of mapped pages: median {runs[len(runs) // 2]} pages, "
            f"longest {runs[-1]}, runs of 16+ pages hold "
            f"{sum(r for r in runs if r >= 16) * 100 // max(1, sum(runs))} %"
        )
    if len(sys.argv) <= 2:
        return
    syms = symbols(binary)
    starts = [s[0] for s in syms]
    by_crate = collections.Counter()
    text = next((s for s in sections if s[0] == ".text"), None)
    for p in pages:
        if not text or not text[1] <= p < text[1] + text[2]:
            continue
        # Split the page among the symbols that overlap it, by bytes.
        i = max(0, bisect.bisect_right(starts, p) - 1)
        while i < len(syms) and syms[i][0] < p + PAGE:
            a, size, name = syms[i]
            overlap = min(a + size, p + PAGE) - max(a, p)
            if overlap > 0:
                by_crate[crate_of(name)] += overlap
            i += 1
    print("  resident .text by crate (KiB):")
    for crate, n in by_crate.most_common(25):
        print(f"    {crate:40} {n / 1024:8.0f}")


if __name__ == "__main__":
    main()
