import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.decisions import (
    Decisions,
    PolicySource,
    RandomSource,
    ReplayError,
    ReplaySource,
    SimplestSource,
)
from emu.path import (
    Choice,
    Cost,
    CpuContext,
    Kind,
    Request,
    cost,
    decode_path,
    deviations,
    encode_path,
    path_cost,
    simplest,
)

ASKS = st.lists(st.tuples(st.sampled_from(list(Kind)), st.integers(1, 40)), max_size=50)


def _ask(d: Decisions, kind: Kind, arity: int) -> int:
    return d.choose(Request(kind, arity, 0))


@given(ASKS, st.integers(0, 2**32))
def test_recorded_path_replays_exactly(asks, seed):
    rec = Decisions(RandomSource(seed))
    first = [_ask(rec, k, n) for k, n in asks]
    rep = Decisions(ReplaySource(rec.path))
    assert [_ask(rep, k, n) for k, n in asks] == first
    assert rep.path == rec.path
    rep.close()  # everything consumed
    assert all(c.arity > 1 for c in rec.path)  # arity-1 choices are not choices


def test_same_seed_same_path():
    a, b = Decisions(RandomSource(9)), Decisions(RandomSource(9))
    assert [_ask(a, Kind.CPU, 7) for _ in range(50)] == [_ask(b, Kind.CPU, 7) for _ in range(50)]


def test_replay_mismatch_names_the_position():
    src = ReplaySource([Choice(Kind.CPU, 3, 1), Choice(Kind.QUANTUM, 8, 2)])
    d = Decisions(src)
    _ask(d, Kind.CPU, 3)
    with pytest.raises(ReplayError) as err:
        _ask(d, Kind.VIEW, 8)
    assert err.value.position == 1


def test_replay_refuses_a_path_that_ends_early_or_has_choices_left():
    """A replay consumes exactly its path (it used to continue a cut path with a default
    policy, so a truncated token replayed as `pass`)."""
    d = Decisions(ReplaySource([Choice(Kind.CPU, 2, 1)]))
    assert _ask(d, Kind.CPU, 2) == 1
    with pytest.raises(ReplayError) as err:
        _ask(d, Kind.QUANTUM, 5)
    assert err.value.position == 1
    left = Decisions(ReplaySource([Choice(Kind.CPU, 2, 1), Choice(Kind.CPU, 2, 0)]))
    _ask(left, Kind.CPU, 2)
    with pytest.raises(ReplayError) as err:
        left.close()
    assert err.value.position == 1


def test_source_answer_out_of_range_is_refused():
    with pytest.raises(ReplayError):
        Decisions(PolicySource(lambda r: r.arity)).choose(Request(Kind.CPU, 3))


def test_choice_validates_value():
    with pytest.raises(ValueError):
        Choice(Kind.CPU, 2, 2)


def test_simplest_is_no_deviation_and_costs_nothing():
    ctx = CpuContext((0, 2, 3), last=2, yielded=frozenset())
    run_on = Request(Kind.CPU, 3, context=ctx)
    assert simplest(run_on) == 1  # keep running CPU 2
    after_yield = Request(Kind.CPU, 3, context=CpuContext((0, 2, 3), 2, frozenset({2})))
    assert simplest(after_yield) == 2  # round-robin: the next CPU after 2
    assert cost(run_on, 1) == Cost() and cost(run_on, 0) == Cost(preemptions=1)
    assert cost(after_yield, 0) == Cost(preemptions=1)  # a non-round-robin pick is a deviation
    assert simplest(Request(Kind.QUANTUM, 16)) == 15
    assert cost(Request(Kind.FLUSH, 3), 2) == Cost(delays=1)
    for kind in (Kind.IPI, Kind.NMI):
        assert simplest(Request(kind, 2)) == 1 and cost(Request(kind, 2), 0) == \
            Cost(interrupts=1)
    assert cost(Request(Kind.NMI_RAISE, 2), 1) == Cost(interrupts=1)


def test_simplest_source_answers_every_request_with_its_simplest():
    d = Decisions(SimplestSource())
    reqs = [Request(Kind.CPU, 2, context=CpuContext((0, 1), 1, frozenset())),
            Request(Kind.QUANTUM, 8, 1), Request(Kind.NMI_RAISE, 2, 1), Request(Kind.IPI, 2, 1)]
    assert [d.choose(r) for r in reqs] == [1, 7, 0, 1]
    assert deviations(d.path) == 0 and path_cost(d.path) == Cost()
    # the same requests answered otherwise: each non-simplest value counts, by its bound
    other = Decisions(PolicySource(lambda r: 0 if r.kind is not Kind.NMI_RAISE else 1))
    for r in reqs:
        other.choose(r)
    assert deviations(other.path) == 4
    assert path_cost(other.path) == Cost(preemptions=2, delays=0, interrupts=2)


def test_random_source_raises_nmis_by_weight_not_arity():
    d = Decisions(RandomSource(3))
    raised = sum(d.choose(Request(Kind.NMI_RAISE, 2, 1, weight=0.05)) for _ in range(4000))
    assert 120 < raised < 280  # about 200: the weight, not one in two


def test_path_codec_round_trips_and_refuses_malformed_items():
    path = [Choice(Kind.CPU, 3, 2), Choice(Kind.NMI_RAISE, 2, 1), Choice(Kind.FLUSH, 4, 0)]
    assert decode_path(encode_path(path)) == path
    for bad in ("x3.1", "c3", "c3.3", "c1.0", "c٣.1", "c3.-1", "c99999999999.1"):
        with pytest.raises(ValueError):
            decode_path(bad)
