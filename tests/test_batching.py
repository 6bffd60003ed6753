"""The commit rule of the batched consumer: the committed offset moves only over an
unbroken run of acknowledged offsets that starts at the committed one."""

from collections import defaultdict

from intervaltree import IntervalTree

from journey.live.batching import BatchConsumer

TP = ("journey.clickstream", 0)


def consumer(committed=None, first_read=None):
    c = object.__new__(BatchConsumer)  # only the offset bookkeeping, no Kafka
    c._acked = defaultdict(list)
    c._acked_index = defaultdict(set)
    c._gap = defaultdict(IntervalTree)
    c._committed_offset = defaultdict(lambda: None)
    c._committed_offset[TP] = committed
    c._first_read = {} if first_read is None else {TP: first_read}
    c._n_acked = 0
    c._waiting_for_ack = None
    return c


def commit(c):
    """What Faust does with ``_new_offset``: commit it and remember it as committed."""
    offset = c._new_offset(TP)
    if offset is not None:
        c._committed_offset[TP] = offset
    return offset


def test_a_record_waiting_at_the_committed_offset_holds_the_commit():
    c = consumer(committed=100)
    c.ack_offsets(TP, [101, 102])   # 100 still in the reorder buffer
    assert commit(c) is None  # Faust's own rule would commit 103 here
    c.ack_offsets(TP, [100])
    assert commit(c) == 103


def test_the_run_stops_at_the_first_hole():
    c = consumer(committed=100)
    c.ack_offsets(TP, [100, 101, 103, 104])
    assert commit(c) == 102
    assert c._acked[TP] == [103, 104]
    c.ack_offsets(TP, [102])
    assert commit(c) == 105


def test_nothing_committed_yet_starts_at_the_first_offset_read():
    c = consumer(committed=None, first_read=0)
    c.ack_offsets(TP, [1, 2])
    assert commit(c) is None
    c.ack_offsets(TP, [0])
    assert commit(c) == 3


def test_offsets_without_a_record_count_as_acknowledged():
    c = consumer(committed=10)
    c._gap[TP].addi(12, 15)         # 12, 13, 14 do not exist (compaction)
    c.ack_offsets(TP, [10, 11, 15])
    assert commit(c) == 16


def test_offsets_below_the_committed_one_are_ignored():
    c = consumer(committed=50)
    assert c.ack_offsets(TP, [48, 49, 50]) == 1
    assert commit(c) == 51
