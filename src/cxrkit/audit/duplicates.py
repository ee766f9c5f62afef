"""Exact (same bytes) and near (perceptual hash within a few bits) duplicate images, grouped into clusters."""

from __future__ import annotations

import numpy as np

# Of 256 pHash bits: resized or re-encoded copies measured 0-2 bits apart, while different radiographs of
# Kermany's pediatric set were at least 54 apart from their nearest neighbour (README, audit section), and
# the demo's smooth synthetic images 10-22 apart: 8 leaves a margin on both sides.
NEAR_DUPLICATE_BITS = 8


def hash_bits(hashes: list[str | None]) -> np.ndarray:
    """Hex perceptual hashes -> packed uint8 rows (missing hashes become all-zero rows; mask them out)."""
    n_hex = max((len(h) for h in hashes if h), default=0)
    out = np.zeros((len(hashes), n_hex // 2), dtype=np.uint8)
    for i, h in enumerate(hashes):
        if h:
            out[i] = np.frombuffer(bytes.fromhex(h), dtype=np.uint8)
    return out


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def near_pairs(hashes: list[str | None], max_bits: int = NEAR_DUPLICATE_BITS, chunk: int = 128) -> list[tuple[int, int, int]]:
    """All pairs (i, j, distance) with i < j whose hashes differ in at most ``max_bits`` bits (all pairs, in chunks)."""
    bits = hash_bits(hashes)
    valid = np.array([bool(h) for h in hashes])
    pairs = []
    for start in range(0, len(bits), chunk):
        block = bits[start : start + chunk]
        # Hamming distance of every block row to every row: popcount of the XOR, byte by byte.
        dist = _POPCOUNT[np.bitwise_xor(block[:, None, :], bits[None, :, :])].sum(axis=2)
        ii, jj = np.nonzero(dist <= max_bits)
        for i, j in zip(ii + start, jj):
            if i < j and valid[i] and valid[j]:
                pairs.append((int(i), int(j), int(dist[i - start, j])))
    return pairs


def clusters(n: int, pairs: list[tuple[int, int, int]]) -> list[list[int]]:
    """Connected groups (size >= 2) of items linked by ``pairs`` (union-find)."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j, _ in pairs:
        parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in {k for p in pairs for k in p[:2]}:
        groups.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def duplicate_report(records: list[dict], splits: list[str], labels: list[str], relpaths: list[str], max_examples: int = 20) -> dict:
    """Exact and near-duplicate clusters, counted by where they sit: within one split and class, across
    classes (conflicting labels) and across splits (leakage)."""
    n = len(records)
    by_sha: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.get("sha1"):  # a file that could not be read has no bytes to compare: those were one "group of copies"
            by_sha.setdefault(r["sha1"], []).append(i)
    exact = [g for g in by_sha.values() if len(g) > 1]
    exact_pairs = [(g[0], j, 0) for g in exact for j in g[1:]]
    near = near_pairs([r.get("phash") for r in records])
    out = {"near_duplicate_bits": NEAR_DUPLICATE_BITS}
    for kind, groups in (("exact", exact), ("near", clusters(n, near + exact_pairs))):
        summary = {"clusters": len(groups), "files": sum(len(g) for g in groups), "redundant_files": sum(len(g) - 1 for g in groups),
                   "across_splits": 0, "across_classes": 0, "within": 0, "examples": []}
        leaking = []
        for g in groups:
            s, c = {splits[i] for i in g}, {labels[i] for i in g}
            summary["across_splits"] += len(s) > 1
            summary["across_classes"] += len(c) > 1
            summary["within"] += len(s) == 1 and len(c) == 1
            if len(s) > 1:
                leaking.append(g)
        ranked = sorted(groups, key=lambda g: (len({splits[i] for i in g}) == 1, len({labels[i] for i in g}) == 1))
        summary["examples"] = [[{"path": relpaths[i], "split": splits[i], "label": labels[i]} for i in g[:5]] for g in ranked[:max_examples]]
        summary["leaking_files"] = sorted({relpaths[i] for g in leaking for i in g})
        out[kind] = summary
    return out
