"""The ggzip.keep SPEC: comma-separated fnmatch globs over tensor names.

llama.cpp copies a string kv override into a 128-byte buffer, so a SPEC holds at most
127 bytes.  compress_spec() writes a set of tensors as few short globs: `all`, whole
layers (`blk.3.*`), roles across layers (`blk.*.ffn_*`, `blk.*.attn_[kv]*`), layer
ranges (`blk.1[0-9].ffn_*`, `blk.2[3-7].*`), single names; every glob is checked by
fnmatch to select only tensors of the set among the eligible ones (the loader ignores
tensors that are not eligible, so a glob may match those), and their union the whole set.
"""
from __future__ import annotations

import re
from fnmatch import fnmatchcase
from itertools import combinations
from typing import Iterable

from ..errors import GGZipError

MAX_SPEC = 127            # llama.cpp: char val_str[128], NUL-terminated
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


class SpecTooLong(GGZipError):
    pass


def selected(spec: str, eligible: Iterable[str]) -> set:
    """The tensors of `eligible` that SPEC keeps, as the loader reads it."""
    names = list(eligible)
    globs = [g.strip() for g in spec.split(",") if g.strip()]
    if globs == ["all"]:
        return set(names)
    if globs in ([], ["none"]):
        return set()
    return {n for n in names if any(fnmatchcase(n, g) for g in globs)}


def _digit_class(digits: list) -> str:
    """One glob character for a set of digits: '7', '[3-6]', '[0247]'."""
    if len(digits) == 1:
        return str(digits[0])
    if digits == list(range(digits[0], digits[-1] + 1)):
        return f"[{digits[0]}-{digits[-1]}]"
    return "[" + "".join(map(str, digits)) + "]"


def _layer_globs(layers: set, all_layers: set) -> list:
    """Globs for the layer field: ['*'] for every layer, else one per tens group
    (a glob 'blk.1[0-9].' only matches two-digit layers: no '*' here, which
    would also match dots)."""
    if layers == all_layers:
        return ["*"]
    groups: dict = {}
    for l in sorted(layers):
        groups.setdefault(str(l)[:-1], []).append(l % 10)
    return [prefix + _digit_class(ds) for prefix, ds in groups.items()]


def _role_globs(roles: list) -> dict:
    """{frozenset of roles: shortest glob selecting exactly them among `roles`}, for
    single roles, '*', and roles sharing a prefix up to one differing character."""
    out: dict = {}

    def offer(subset, glob):
        if {r for r in roles if fnmatchcase(r, glob)} == set(subset):
            key = frozenset(subset)
            if key not in out or len(glob) < len(out[key]):
                out[key] = glob

    offer(roles, "*")
    for r in roles:
        offer([r], r)
        for k in range(1, len(r)):
            offer([r], r[:k] + "*")
    # roles that differ at one position after a common prefix: attn_[kqv]*, ffn_[gu]*
    by_prefix: dict = {}
    for r in roles:
        for k in range(len(r)):
            by_prefix.setdefault(r[:k], []).append(r)
    for prefix, rs in by_prefix.items():
        if len(rs) < 2:
            continue
        offer(rs, prefix + "*")
        chars = sorted({r[len(prefix)] for r in rs})
        if len(chars) < 2 or len(chars) > 6:
            continue
        for n in range(2, len(chars) + 1):
            for cs in combinations(chars, n):
                sub = [r for r in rs if r[len(prefix)] in cs]
                offer(sub, prefix + "[" + "".join(cs) + "]*")
    return out


def compress_spec(keep: Iterable[str], eligible: Iterable[str], limit: int = MAX_SPEC) -> str:
    """The shortest SPEC this finds that keeps exactly `keep` among `eligible`.
    Greedy weighted set cover over candidate globs that each select a subset of
    `keep` (most newly covered tensors per byte first), then a pass that drops
    globs covered by the others.
    @return SPEC ('none', 'all' or globs); SpecTooLong when it exceeds `limit` bytes"""
    eligible = list(dict.fromkeys(eligible))
    keep = set(keep)
    if not keep <= set(eligible):
        raise GGZipError(f"cannot keep {sorted(keep - set(eligible))[0]!r}: not an eligible tensor")
    if not keep:
        return "none"
    if keep == set(eligible):
        return "all"

    grid: dict = {}       # role -> {layer: name} over eligible blk.N.<role> tensors
    for n in eligible:
        m = _BLK.match(n)
        if m:
            grid.setdefault(m.group(2), {})[int(m.group(1))] = n
    all_layers = {l for per in grid.values() for l in per}
    roles = sorted(grid)

    candidates: dict = {}    # glob -> set of kept tensors it selects

    def offer(glob):
        sel = {n for n in eligible if fnmatchcase(n, glob)}
        if sel and sel <= keep and glob not in candidates:
            candidates[glob] = sel

    for n in keep:           # single names, shortened to a unique prefix when possible
        offer(n)
        for k in range(1, len(n)):
            # outside blk.N any prefix (few names: 'output.*', 't*'); in blk.N the
            # role globs below do better, a cut after a dot is enough ('blk.3.*')
            if not _BLK.match(n) or n[k - 1] == ".":
                offer(n[:k] + "*")
    for rset, rglob in _role_globs(roles).items():
        # layers where every role of the set is kept (and present)
        layers = {l for l in all_layers
                  if all(l in grid[r] for r in rset) and all(grid[r][l] in keep for r in rset)}
        if not layers:
            continue
        for lg in _layer_globs(layers, all_layers):
            offer(f"blk.{lg}.{rglob}")
        for l in layers:
            offer(f"blk.{l}.{rglob}")

    chosen, covered = [], set()
    while covered != keep:
        best = max(candidates.items(), key=lambda kv: (len(kv[1] - covered) / (len(kv[0]) + 1), -len(kv[0])))
        if not best[1] - covered:
            raise GGZipError("compress_spec: no glob covers " + sorted(keep - covered)[0])
        chosen.append(best[0])
        covered |= best[1]
    for g in sorted(chosen, key=len, reverse=True):   # drop globs the others already cover
        rest = [c for c in chosen if c != g]
        if rest and set().union(*(candidates[c] for c in rest)) == keep:
            chosen = rest
    spec = ",".join(chosen)
    if selected(spec, eligible) != keep:   # by construction; checked because the loader relies on it
        raise GGZipError(f"compress_spec: {spec!r} does not select the planned tensors")
    if len(spec.encode()) > limit:
        raise SpecTooLong(f"the {len(keep)} tensors to keep need a SPEC of {len(spec.encode())} bytes "
                          f"(llama.cpp's override holds {limit}): {spec[:80]}...")
    return spec
