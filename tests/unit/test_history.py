"""Channel history's pure decisions: ?recover= parsing, offsets and epochs, pages, the recovery loop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout.channels import with_channel
from fanout.errors import Refused
from fanout.history import (
    MAX_OFFSET,
    Head,
    Stored,
    delivers_live,
    epoch_problem,
    history_frame,
    new_epoch,
    next_head,
    page,
    parse_recover,
    recover_param,
    recovery_problem,
    start_after,
    trimmed,
)
from fanout.protocol import Grants, History, connect_recovery, read_message
from fanout.recovery import RecoveryImpossible, read_page, recover

KEEP = 100


def env(offset: int, epoch: str = "ep1", channel: str = "room:1") -> str:
    frame = json.dumps({"type": "broadcast", "broadcastId": f"b{offset}", "sentAt": 1, "data": {"n": offset}})
    return with_channel(frame.replace(", ", ","), channel, offset, epoch)


# -- ?recover= --------------------------------------------------------------------------------------
def test_recover_items_are_read_from_the_right_so_channel_names_keep_their_colons() -> None:
    items = parse_recover("room:1:5:ep1, chat:eu:west:0:Zz_-9")
    got = [(i.channel, i.since, i.epoch) for i in items]
    assert got == [("room:1", 5, "ep1"), ("chat:eu:west", 0, "Zz_-9")]
    assert parse_recover("") == [] and parse_recover(None) == [] and parse_recover(" , ") == []


@pytest.mark.parametrize(
    "value",
    ["room", "room:5", ":5:ep", "room:x:ep", "room:-1:ep", "room:5:", "room:5:e p", "ro om:5:ep",
     f"room:{MAX_OFFSET + 1}:ep", "room:\u0661:ep", "room:1:ep,room:2:ep"],
)  # fmt: skip
def test_a_bad_recover_item_is_refused_with_a_reason(value: str) -> None:
    with pytest.raises(Refused) as caught:
        parse_recover(value)
    assert caught.value.status == 400 and caught.value.code == "invalid_recover"
    assert "recover" in str(caught.value)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z0-9:_.\-]{1,20}", fullmatch=True),
            st.integers(0, MAX_OFFSET),
            st.from_regex(r"[A-Za-z0-9_\-]{1,12}", fullmatch=True),
        ),
        max_size=5,
        unique_by=lambda t: t[0],
    )
)
def test_recover_parses_what_a_client_writes(items: list[tuple[str, int, str]]) -> None:
    value = ",".join(f"{c}:{n}:{e}" for c, n, e in items)
    assert [(i.channel, i.since, i.epoch) for i in parse_recover(value)] == items


def test_recover_param_joins_repeated_parameters() -> None:
    assert recover_param({"recover": "b:1:e"}, {"recover": ["a:1:e", "b:1:e"]}) == "a:1:e,b:1:e"
    assert recover_param({"recover": "a:1:e"}) == "a:1:e"
    assert recover_param(None) == ""


def test_connect_recovery_needs_the_channels_claim_and_counts_toward_the_limit() -> None:
    grants = Grants(user_id="u", channels=("room:*",))
    assert [i.channel for i in connect_recovery(grants, "room:1:3:e", [], limit=2)] == ["room:1"]
    with pytest.raises(Refused) as forbidden:
        connect_recovery(grants, "secret:1:3:e", [], limit=2)
    assert forbidden.value.status == 403
    with pytest.raises(Refused) as many:
        connect_recovery(grants, "room:1:3:e,room:2:3:e", ["room:3"], limit=2)
    assert many.value.code == "too_many_subscriptions"
    # the same channel in both counts once
    assert len(connect_recovery(grants, "room:1:3:e", ["room:1"], limit=1)) == 1


# -- offsets and epochs ---------------------------------------------------------------------------
def test_offsets_follow_the_head_and_a_missing_head_starts_a_new_epoch_at_one() -> None:
    assert next_head(None, lambda: "fresh") == Head(1, "fresh")
    assert next_head(Head(41, "e"), lambda: "never") == Head(42, "e")
    assert trimmed(100, KEEP) is None and trimmed(101, KEEP) == 1
    epoch = new_epoch()
    assert epoch_problem(epoch) is None and ":" not in epoch and "," not in epoch


def test_the_envelope_carries_channel_offset_and_epoch_before_data() -> None:
    frame = '{"type":"broadcast","broadcastId":"b","sentAt":1,"data":{"x":",\\"data\\":"}}'
    out = json.loads(with_channel(frame, "room:1", 7, "ep"))
    assert out == {"type": "broadcast", "broadcastId": "b", "sentAt": 1, "channel": "room:1", "offset": 7,
                   "epoch": "ep", "data": {"x": ',"data":'}}  # fmt: skip


@pytest.mark.parametrize(
    ("head", "since", "epoch", "possible"),
    [
        (Head(10, "e"), 10, "e", True),  # nothing missed
        (Head(10, "e"), 3, "e", True),
        (Head(10, "e"), 3, "other", False),  # reset
        (Head(10, "e"), 11, "e", False),  # from the future
        (Head(500, "e"), 399, "e", False),  # older than the 100 kept (401..500)
        (Head(500, "e"), 400, "e", True),
        (None, 0, None, True),  # no history at all, first read
        (None, 3, "e", False),  # history lost
        (Head(500, "e"), 0, None, True),  # first read: what is kept
    ],
)
def test_recovery_is_possible_only_within_the_kept_window_of_the_same_epoch(
    head: Head | None, since: int, epoch: str | None, possible: bool
) -> None:
    assert (recovery_problem(head, since, epoch, KEEP) is None) is possible


def test_a_first_read_starts_at_the_oldest_kept() -> None:
    assert start_after(Head(500, "e"), 0, None, KEEP) == 400
    assert start_after(Head(5, "e"), 0, None, KEEP) == 0
    assert start_after(Head(500, "e"), 450, "e", KEEP) == 450


# -- pages ------------------------------------------------------------------------------------------
def rows(lo: int, hi: int, epoch: str = "ep1") -> list[Stored]:
    return [Stored(n, epoch, env(n, epoch)) for n in range(lo, hi + 1)]


def test_a_page_is_consecutive_offsets_up_to_the_limit_and_says_whether_more_follow() -> None:
    got, more = page(rows(4, 10), 3, Head(10, "ep1"), limit=5)
    assert [r.offset for r in got] == [4, 5, 6, 7, 8] and more
    got, more = page(rows(9, 10), 8, Head(10, "ep1"), limit=5)
    assert [r.offset for r in got] == [9, 10] and not more


def test_a_page_skips_rows_of_another_epoch_or_past_the_head_and_fails_on_a_hole() -> None:
    mixed = [*rows(1, 2, "old"), *rows(1, 3), *rows(4, 4)]
    got, more = page(sorted(mixed, key=lambda r: r.offset), 0, Head(3, "ep1"), limit=10)
    assert [(r.offset, r.epoch) for r in got] == [(1, "ep1"), (2, "ep1"), (3, "ep1")] and not more
    with pytest.raises(LookupError):
        page([*rows(1, 2), *rows(4, 5)], 0, Head(5, "ep1"), limit=10)
    with pytest.raises(LookupError):  # expired rows: nothing read while the head is ahead
        page([], 2, Head(5, "ep1"), limit=10)


def test_a_page_stays_within_its_byte_budget_but_holds_at_least_one() -> None:
    big = [Stored(n, "e", "x" * 1000) for n in range(1, 6)]
    got, more = page(big, 0, Head(5, "e"), limit=50, budget=2500)
    assert len(got) == 2 and more
    got, _ = page(big, 0, Head(5, "e"), limit=50, budget=10)
    assert len(got) == 1


def test_the_history_frame_holds_the_envelopes_as_sent() -> None:
    frame = history_frame("room:1", "ep1", rows(1, 2), True)
    data = json.loads(frame)
    assert data["type"] == "history" and data["channel"] == "room:1" and data["epoch"] == "ep1"
    assert data["more"] is True and [m["offset"] for m in data["messages"]] == [1, 2]
    assert json.loads(history_frame("a", None, [], False)) == {
        "type": "history", "channel": "a", "epoch": None, "messages": [], "more": False}  # fmt: skip


def test_live_delivery_skips_what_recovery_delivers() -> None:
    assert delivers_live(None, 5) and delivers_live(4, 5) and delivers_live(4, None)
    assert not delivers_live(5, 5) and not delivers_live(MAX_OFFSET, 1)


# -- the history action ------------------------------------------------------------------------------
GRANTS = Grants(user_id="u", channels=("room:*",))


def test_the_history_action_parses_and_needs_the_right_to_subscribe() -> None:
    msg = '{"action":"history","channel":"room:1","since":4,"epoch":"ep1"}'
    assert read_message(msg, is_base64=False, grants=GRANTS) == History("room:1", 4, "ep1")
    refused = read_message('{"action":"history","channel":"admin","since":0}', is_base64=False, grants=GRANTS)
    assert not isinstance(refused, History) and refused.code == "forbidden"  # type: ignore[union-attr]
    for bad in ('"since":-1', '"since":true', '"since":"3"', '"since":1.5', '"since":1,"epoch":"a:b"'):
        out = read_message(f'{{"action":"history","channel":"room:1",{bad}}}', is_base64=False, grants=GRANTS)
        assert not isinstance(out, History) and out.code == "invalid", bad  # type: ignore[union-attr]


# -- reading and recovering over an in-memory history ----------------------------------------------------
@dataclass
class FakeHistory:
    """The history adapter's contract in memory; `on_go_live` lets a test append at the boundary."""

    head_: Head | None = None
    stored: dict[int, Stored] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)
    on_go_live: list[int] = field(default_factory=list)

    def append(self, n: int = 1) -> None:
        for _ in range(n):
            head = self.head_ = next_head(self.head_, lambda: "ep1")
            self.stored[head.offset] = Stored(head.offset, head.epoch, env(head.offset))

    def head(self, channel: str) -> Head | None:
        return self.head_

    def rows(self, channel: str, after: int, limit: int = 100) -> list[Stored]:
        return [self.stored[n] for n in sorted(self.stored) if n > after][:limit]

    def go_live(self, channel: str, connection_id: str, head: Head | None) -> bool | None:
        if self.on_go_live:
            self.append(self.on_go_live.pop(0))  # a message got its offset just before the hand-over
        if head != self.head_:
            return False
        self.live[connection_id] = head.offset if head else 0
        return True


def offsets_of(frames: list[str]) -> list[int]:
    return [json.loads(f)["offset"] for f in frames]


def test_recovery_sends_the_missed_in_order_then_hands_over_at_the_head_it_reached() -> None:
    h = FakeHistory()
    h.append(12)
    h.on_go_live = [2, 1]  # the head moves twice while recovery finishes
    sent: list[str] = []
    done = recover(h, lambda f: sent.append(f) or True, "c1", "room:1", 4, "ep1", keep=KEEP, limit=3,
                   impossible_frame=lambda e: "impossible")  # fmt: skip
    assert offsets_of(sent) == list(range(5, 16)) and done.sent == 11 and done.impossible is None
    assert h.live["c1"] == 15  # live delivery takes 16 on: no gap, no duplicate


def test_recovery_of_a_reset_channel_tells_the_client_and_goes_live_at_the_head() -> None:
    h = FakeHistory()
    h.append(3)
    sent: list[str] = []
    done = recover(h, lambda f: sent.append(f) or True, "c1", "room:1", 2, "stale", keep=KEEP, limit=10,
                   impossible_frame=lambda e: f"impossible:{e.epoch}")  # fmt: skip
    assert sent == ["impossible:ep1"] and done.impossible and h.live["c1"] == 3


def test_recovery_stops_when_the_connection_is_gone() -> None:
    h = FakeHistory()
    h.append(5)
    done = recover(h, lambda f: False, "c1", "room:1", 0, "ep1", keep=KEEP, limit=10,
                   impossible_frame=lambda e: "")  # fmt: skip
    assert done.gone and "c1" not in h.live


def test_read_page_refuses_what_is_not_kept() -> None:
    h = FakeHistory()
    h.append(150)
    for n in range(1, 51):
        del h.stored[n]  # trimmed: only the last 100 are kept
    assert [r.offset for r in read_page(h, "room:1", 140, "ep1", keep=KEEP, limit=50).messages] == list(
        range(141, 151)
    )
    first = read_page(h, "room:1", 0, None, keep=KEEP, limit=10)
    assert first.messages[0].offset == 51 and first.more
    with pytest.raises(RecoveryImpossible):
        read_page(h, "room:1", 20, "ep1", keep=KEEP, limit=10)
    del h.stored[120]  # expired early
    with pytest.raises(RecoveryImpossible):
        read_page(h, "room:1", 110, "ep1", keep=KEEP, limit=50)
