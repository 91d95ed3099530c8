"""The Merkle math of ledger/merkle.py against RFC 9162, without a database.

The reference functions below are the RFC's recursive definitions (2.1.1, 2.1.3.1, 2.1.4.1)
transcribed literally; the module computes the same values from stored perfect subtrees.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    NodeId,
    all_nodes,
    consistency_proof,
    consistency_proof_ranges,
    extend,
    frontier,
    inclusion_path_ranges,
    inclusion_proof,
    leaf_hash,
    range_hash,
    range_nodes,
    root,
    root_from_frontier,
    split_point,
    verify_consistency,
    verify_inclusion,
)

MAX_LEAVES = 64


# --- RFC 9162, literally ---


def mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = split_point(n)
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


# --- Strategies ---

# Distinct leaves: with two equal leaves, a proof for one verifies as a proof for the other
# at its index, which is right (same data, same hash) but not what the mutation tests ask.
trees = st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=MAX_LEAVES, unique=True)


def flip(data: bytes, at: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


# --- Known answers ---


def test_the_certificate_transparency_reference_vectors() -> None:
    """The roots of the first 1..8 leaves of the test data in the Certificate Transparency
    reference implementation's Merkle tree tests."""
    leaves = [
        bytes.fromhex(h)
        for h in (
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        )
    ]
    expected = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    assert [root(leaves[:n]).hex() for n in range(1, 9)] == expected
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_split_point_is_the_largest_power_of_two_below() -> None:
    assert [split_point(n) for n in range(2, 11)] == [1, 2, 2, 4, 4, 4, 4, 8, 8]
    with pytest.raises(ValueError, match="does not split"):
        split_point(1)


def test_a_leaf_hash_is_never_a_node_hash_of_the_same_bytes() -> None:
    left, right = b"\x11" * 32, b"\x22" * 32
    assert leaf_hash(left + right) != hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()


# --- Stored subtrees compose the RFC's hashes ---


@given(trees, st.lists(st.integers(1, 20), min_size=1, max_size=10))
@settings(max_examples=60)
def test_extending_in_batches_stores_the_same_nodes_and_roots(
    leaves: list[bytes], batches: list[int]
) -> None:
    """Sealing in any batching stores exactly the perfect subtrees of the whole tree, and
    each intermediate root (from the frontier alone) is the RFC's root of that prefix."""
    stored: dict[NodeId, bytes] = {}
    size = 0
    for batch in batches * MAX_LEAVES:
        if size == len(leaves):
            break
        new = leaves[size : size + batch]
        completed = extend(size, {n: stored[n] for n in frontier(size)}, map(leaf_hash, new))
        assert not stored.keys() & {node for node, _ in completed}, "a node written twice"
        stored.update(completed)
        size += len(new)
        assert root_from_frontier(size, {n: stored[n] for n in frontier(size)}) == mth(
            leaves[:size]
        )
    assert stored == all_nodes(leaves)
    for node, value in stored.items():
        assert value == mth(leaves[node.start : node.end])


@given(trees)
@settings(max_examples=60)
def test_every_proof_range_composes_from_stored_subtrees(leaves: list[bytes]) -> None:
    nodes = all_nodes(leaves)
    n = len(leaves)
    ranges = {r for i in range(n) for r in inclusion_path_ranges(i, n)}
    ranges |= {r for m in range(1, n + 1) for r in consistency_proof_ranges(m, n)}
    for start, end in ranges:
        assert range_hash(start, end, nodes.__getitem__) == mth(leaves[start:end])
        # O(log n) stored nodes per range: at most one per bit of its length.
        assert len(range_nodes(start, end)) <= (end - start).bit_length()


def test_unaligned_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="not aligned"):
        range_nodes(1, 3)
    with pytest.raises(ValueError, match="not aligned"):
        range_nodes(2, 6)
    with pytest.raises(ValueError, match="empty"):
        range_nodes(3, 3)


# --- Inclusion proofs ---


@given(trees)
@settings(max_examples=60)
def test_inclusion_proofs_match_the_rfc_and_verify_for_every_leaf(leaves: list[bytes]) -> None:
    tree_root = root(leaves)
    for index, leaf in enumerate(leaves):
        proof = inclusion_proof(index, leaves)
        assert proof == path(index, leaves)
        assert verify_inclusion(leaf_hash(leaf), index, len(leaves), proof, tree_root)


@given(trees, st.data())
@settings(max_examples=150)
def test_any_single_change_breaks_an_inclusion_proof(
    leaves: list[bytes], data: st.DataObject
) -> None:
    n = data.draw(st.integers(1, len(leaves)), label="tree size")
    tree = leaves[:n]
    index = data.draw(st.integers(0, n - 1), label="leaf index")
    proof = inclusion_proof(index, tree)
    tree_root = root(tree)
    leaf = leaf_hash(tree[index])
    assert verify_inclusion(leaf, index, n, proof, tree_root)

    changed_data = flip(tree[index], data.draw(st.integers(0, 11)))
    assert not verify_inclusion(leaf_hash(changed_data), index, n, proof, tree_root)
    assert not verify_inclusion(
        flip(leaf, data.draw(st.integers(0, 31))), index, n, proof, tree_root
    )
    assert not verify_inclusion(
        leaf, index, n, proof, flip(tree_root, data.draw(st.integers(0, 31)))
    )
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="path element")
        altered = [*proof[:at], flip(proof[at], data.draw(st.integers(0, 31))), *proof[at + 1 :]]
        assert not verify_inclusion(leaf, index, n, altered, tree_root)
        assert not verify_inclusion(leaf, index, n, proof[:-1], tree_root)
    assert not verify_inclusion(leaf, index, n, [*proof, proof[0] if proof else leaf], tree_root)

    other_index = data.draw(st.integers(0, n).filter(lambda i: i != index), label="index")
    assert not verify_inclusion(leaf, other_index, n, proof, tree_root)

    # The size: a proof for one tree never passes for another size against that size's
    # root. (Against the *same* root the RFC check cannot see a size whose path has the
    # same shape; in a seal the size is signed together with the root.)
    other_sizes = [size for size in range(index + 1, len(leaves) + 1) if size != n]
    if other_sizes:
        other = data.draw(st.sampled_from(other_sizes), label="other size")
        assert not verify_inclusion(leaf, index, other, proof, root(leaves[:other]))


def test_inclusion_verification_refuses_impossible_indexes() -> None:
    leaves = [b"a", b"b", b"c"]
    proof = inclusion_proof(2, leaves)
    assert not verify_inclusion(leaf_hash(b"c"), 3, 3, proof, root(leaves))
    assert not verify_inclusion(leaf_hash(b"c"), -1, 3, proof, root(leaves))
    assert not verify_inclusion(leaf_hash(b"a"), 0, 0, [], EMPTY_ROOT)
    assert verify_inclusion(leaf_hash(b"a"), 0, 1, [], leaf_hash(b"a"))
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_path_ranges(3, 3)


# --- Consistency proofs ---


@given(trees)
@settings(max_examples=60)
def test_consistency_proofs_match_the_rfc_and_verify_for_every_pair_of_sizes(
    leaves: list[bytes],
) -> None:
    n = len(leaves)
    roots = [root(leaves[:size]) for size in range(n + 1)]
    for m in range(1, n + 1):
        proof = consistency_proof(m, leaves)
        assert proof == subproof(m, leaves, True)
        assert verify_consistency(m, n, roots[m], roots[n], proof)


@given(trees, st.data())
@settings(max_examples=150)
def test_any_single_change_breaks_a_consistency_proof(
    leaves: list[bytes], data: st.DataObject
) -> None:
    n = len(leaves)
    m = data.draw(st.integers(1, n), label="first size")
    proof = consistency_proof(m, leaves)
    first_root, second_root = root(leaves[:m]), root(leaves)
    assert verify_consistency(m, n, first_root, second_root, proof)

    at = data.draw(st.integers(0, 31))
    assert not verify_consistency(m, n, flip(first_root, at), second_root, proof)
    assert not verify_consistency(m, n, first_root, flip(second_root, at), proof)
    if proof:
        index = data.draw(st.integers(0, len(proof) - 1), label="path element")
        altered = [*proof[:index], flip(proof[index], at), *proof[index + 1 :]]
        assert not verify_consistency(m, n, first_root, second_root, altered)
        assert not verify_consistency(m, n, first_root, second_root, proof[:-1])
    assert not verify_consistency(m, n, first_root, second_root, [*proof, second_root])

    # Other sizes, each against the roots of those sizes: an equal-size pair with an empty
    # proof is trivially consistent, every other pair must fail.
    m2 = data.draw(st.integers(1, n), label="other first size")
    n2 = data.draw(st.integers(m2, n), label="other second size")
    if (m2, n2) != (m, n) and not (m2 == n2 and not proof):
        assert not verify_consistency(m2, n2, root(leaves[:m2]), root(leaves[:n2]), proof)
    # A leaf edited anywhere (below the first size or after it): the first tree is no
    # longer a prefix of the second.
    edited = list(leaves)
    where = data.draw(st.integers(0, n - 1), label="edited leaf")
    edited[where] = flip(edited[where], at)
    assert not verify_consistency(m, n, first_root, root(edited), proof)


def test_consistency_verification_refuses_impossible_sizes() -> None:
    leaves = [b"a", b"b", b"c", b"d"]
    two, four = root(leaves[:2]), root(leaves)
    proof = consistency_proof(2, leaves)
    assert verify_consistency(2, 4, two, four, proof)
    assert not verify_consistency(0, 4, EMPTY_ROOT, four, proof)
    assert not verify_consistency(4, 2, four, two, proof)
    # The RFC procedure fails every empty proof; equal sizes need one and equal roots.
    assert verify_consistency(4, 4, four, four, [])
    assert not verify_consistency(4, 4, four, two, [])
    assert not verify_consistency(4, 4, four, four, [four])
    assert not verify_consistency(2, 4, two, four, [])
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof_ranges(3, 2)


def test_every_leaf_and_every_pair_of_sizes_up_to_64() -> None:
    """The exhaustive sweep behind the random trees above."""
    leaves = [index.to_bytes(2, "big") for index in range(MAX_LEAVES)]
    roots = [mth(leaves[:size]) for size in range(MAX_LEAVES + 1)]
    for n in range(1, MAX_LEAVES + 1):
        tree = leaves[:n]
        nodes = all_nodes(tree)
        assert root_from_frontier(n, {node: nodes[node] for node in frontier(n)}) == roots[n]
        for index in range(n):
            proof = [
                range_hash(a, b, nodes.__getitem__) for a, b in inclusion_path_ranges(index, n)
            ]
            assert proof == path(index, tree)
            assert verify_inclusion(leaf_hash(tree[index]), index, n, proof, roots[n])
        for m in range(1, n + 1):
            proof = [range_hash(a, b, nodes.__getitem__) for a, b in consistency_proof_ranges(m, n)]
            assert proof == subproof(m, tree, True)
            assert verify_consistency(m, n, roots[m], roots[n], proof)
