"""Ids from the kernel's CSPRNG, read in blocks (gateway.sip.address.IdGenerator)."""

from __future__ import annotations

import random
import re

from gateway.sip.address import BRANCH_COOKIE, IdGenerator


def test_pooled_ids_are_hex_of_the_asked_length_and_never_repeat_across_refills() -> None:
    ids = IdGenerator()
    tokens = [ids.token(n) for n in (8, 6, 10) for _ in range(1500)]  # ~4 pool refills
    assert len(set(tokens)) == len(tokens)
    assert all(re.fullmatch(r"[0-9a-f]+", t) for t in tokens)
    assert {len(t) for t in tokens} == {12, 16, 20}
    assert ids.branch().startswith(BRANCH_COOKIE) and len(ids.branch()) == len(BRANCH_COOKIE) + 16
    assert re.fullmatch(r"[0-9a-f]{20}@gw\.example", ids.call_id("gw.example"))


def test_a_token_longer_than_the_pool_still_comes_whole() -> None:
    assert len(IdGenerator().token(5000)) == 10000


def test_an_injected_random_source_gives_the_same_ids_as_before() -> None:
    first, second = IdGenerator(random.Random(7)), IdGenerator(random.Random(7))
    assert [first.tag() for _ in range(5)] == [second.tag() for _ in range(5)]
    assert IdGenerator(random.Random(1)).token(4) == f"{random.Random(1).getrandbits(32):08x}"
