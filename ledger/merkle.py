"""Merkle tree math of RFC 9162 (Certificate Transparency 2.0), section 2.1. Pure: no I/O.

The tree over n leaves D[0:n] (RFC 9162, 2.1.1):

    MTH({})       = SHA-256()
    MTH({d0})     = SHA-256(0x00 || d0)                        leaf hash
    MTH(D[0:n])   = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  node hash, for n > 1,
                    where k is the largest power of two smaller than n.

The 0x00 / 0x01 prefixes keep a leaf hash from ever being read as a node hash.

Storage never holds whole trees. It holds *perfect subtrees*: the node at (height h,
index i) is the root of the 2**h leaves D[i*2**h : (i+1)*2**h]. Every range whose hash an
RFC proof needs, D[a:b], starts at a multiple of the largest power of two not above its
length, so its hash is composed from O(log n) perfect subtrees (`range_nodes`,
`range_hash`). `extend` computes the perfect subtrees that a batch of new leaves completes,
from the *frontier* of the tree before it (the perfect subtrees that make up D[0:size], one
per set bit of size), so sealing never re-reads old leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """A perfect subtree: the root of the 2**height leaves from index * 2**height."""

    height: int
    index: int

    @property
    def start(self) -> int:
        return self.index << self.height

    @property
    def end(self) -> int:
        return (self.index + 1) << self.height


NodeLookup = Callable[[NodeId], bytes]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(size: int) -> int:
    """k of RFC 9162: the largest power of two smaller than `size` (size > 1)."""
    if size < 2:
        raise ValueError(f"a tree of {size} leaves does not split")
    return 1 << ((size - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over the leaf data, by the recursive definition (RFC 9162, 2.1.1)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = split_point(len(leaves))
    return node_hash(root(leaves[:k]), root(leaves[k:]))


# --- Which ranges a proof is made of (RFC 9162, 2.1.3.1 and 2.1.4.1) ---


def _check_range(start: int, end: int) -> None:
    if not 0 <= start < end:
        raise ValueError(f"empty or negative range [{start}, {end})")


def inclusion_path_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges D[a:b] whose MTHs form PATH(index, D[0:size]), from the leaf upwards."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_proof_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The ranges whose MTHs form PROOF(first, D[0:second]) (empty when first == second)."""
    if not 1 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    ranges: list[tuple[int, int]] = []
    start, end, m, whole = 0, second, first, True
    # SUBPROOF(m, D[start:end], whole), unrolled: each step appends the sibling range it
    # does not descend into; the list is reversed at the end (the RFC appends on return).
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
            whole = False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def range_nodes(start: int, end: int) -> list[NodeId]:
    """The perfect subtrees whose composition is MTH(D[start:end]), left to right.

    Valid for the ranges RFC proofs and roots use: `start` is a multiple of the largest
    power of two not above `end - start` (always true for ranges from the functions above).
    """
    _check_range(start, end)
    nodes: list[NodeId] = []
    while True:
        size = end - start
        if size & (size - 1) == 0:  # a power of two: one perfect subtree
            height = size.bit_length() - 1
            if start % size:
                raise ValueError(f"range [{start}, {end}) is not aligned to a subtree")
            nodes.append(NodeId(height, start >> height))
            return nodes
        k = split_point(size)
        if start % k:
            raise ValueError(f"range [{start}, {end}) is not aligned to a subtree")
        height = k.bit_length() - 1
        nodes.append(NodeId(height, start >> height))
        start += k


def range_hash(start: int, end: int, node: NodeLookup) -> bytes:
    """MTH(D[start:end]) composed from stored perfect subtrees (see `range_nodes`).

    MTH(D[a:b]) = node_hash(MTH(left subtree), MTH(rest)), so the composition folds from
    the right: the last (smallest) subtree is the innermost right child.
    """
    nodes = range_nodes(start, end)
    result = node(nodes[-1])
    for left in reversed(nodes[:-1]):
        result = node_hash(node(left), result)
    return result


def frontier(size: int) -> list[NodeId]:
    """The perfect subtrees that make up D[0:size], largest first (one per set bit)."""
    return range_nodes(0, size) if size else []


def extend(
    size: int, frontier_hashes: Mapping[NodeId, bytes], new_leaf_hashes: Iterable[bytes]
) -> list[tuple[NodeId, bytes]]:
    """Every perfect subtree completed by appending leaves (given as leaf hashes) to a tree
    of `size` leaves, whose frontier is `frontier_hashes` (see `frontier`).

    Returns (node, hash) pairs, the new leaves themselves (height 0) included, in the order
    they were completed. Only the frontier of the old tree is needed, never older nodes.
    """
    # The frontier as a stack of (height, hash), largest (leftmost) first. Appending a leaf
    # merges equal heights from the right, exactly like a binary counter's carry.
    stack: list[tuple[int, bytes]] = [
        (node.height, frontier_hashes[node]) for node in frontier(size)
    ]
    completed: list[tuple[NodeId, bytes]] = []
    for leaf in new_leaf_hashes:
        completed.append((NodeId(0, size), leaf))
        height, value = 0, leaf
        size += 1
        while stack and stack[-1][0] == height:
            _, left = stack.pop()
            height += 1
            value = node_hash(left, value)
            completed.append((NodeId(height, (size >> height) - 1), value))
        stack.append((height, value))
    return completed


def root_from_frontier(size: int, frontier_hashes: Mapping[NodeId, bytes]) -> bytes:
    """MTH(D[0:size]) from the tree's frontier."""
    if size == 0:
        return EMPTY_ROOT
    return range_hash(0, size, frontier_hashes.__getitem__)


# --- In-memory trees (tests, small logs, auditors' tools) ---


def all_nodes(leaves: Sequence[bytes]) -> dict[NodeId, bytes]:
    """Every perfect subtree of the tree over `leaves` (leaf data)."""
    return dict(extend(0, {}, (leaf_hash(leaf) for leaf in leaves)))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[0:n]) over in-memory leaf data."""
    nodes = all_nodes(leaves)
    return [
        range_hash(a, b, nodes.__getitem__) for a, b in inclusion_path_ranges(index, len(leaves))
    ]


def consistency_proof(first: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(first, D[0:n]) over in-memory leaf data."""
    nodes = all_nodes(leaves)
    return [
        range_hash(a, b, nodes.__getitem__) for a, b in consistency_proof_ranges(first, len(leaves))
    ]


# --- Verification, step by step as RFC 9162 writes it ---


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root_hash: bytes
) -> bool:
    """RFC 9162, 2.1.3.2. `leaf` is the leaf hash (leaf_hash of the leaf data)."""
    # 1. The leaf index must lie inside the tree.
    if not 0 <= index < size:
        return False
    # 2.-3.
    fn, sn = index, size - 1
    r = leaf
    # 4.
    for p in path:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            r = node_hash(p, r)
            while fn != 0 and not fn & 1:  # only when b. was entered through fn == sn
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # c.
        sn >>= 1
    # 5.
    return sn == 0 and r == root_hash


def verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162, 2.1.4.2, for 0 < first < second.

    first == second is the case the RFC's procedure leaves out (its proof is empty, and
    step 1 fails every empty proof): it is consistent exactly when the proof is empty and
    the two roots are equal. Sizes outside 1 <= first <= second never verify.
    """
    if not 1 <= first <= second:
        return False
    if first == second:
        return not path and first_hash == second_hash
    # 1.
    if not path:
        return False
    proof = list(path)
    # 2. A power-of-two first tree is itself a node of the second: its root starts the path.
    if first & (first - 1) == 0:
        proof.insert(0, first_hash)
    # 3.
    fn, sn = first - 1, second - 1
    # 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = proof[0]
    # 6.
    for c in proof[1:]:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn != 0 and not fn & 1:  # only when b. was entered through fn == sn
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # c.
        sn >>= 1
    # 7.
    return fr == first_hash and sr == second_hash and sn == 0
