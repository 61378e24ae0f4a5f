import ctypes

import pytest

from emu.fetch_view import FetchView, Grain


def make(grain, size=256):
    return FetchView(ctypes.create_string_buffer(size), grain), ctypes.create_string_buffer(size)


@pytest.mark.parametrize("grain,units", [
    (Grain.BYTE, [(14, 15), (15, 16), (16, 17), (17, 18)]),
    (Grain.FETCH_BLOCK, [(0, 16), (16, 32)]),
    (Grain.LINE, [(0, 64)]),
    (Grain.STORE, [(14, 18)]),
])
def test_a_store_is_pending_in_units_of_the_grain(grain, units):
    view, _ = make(grain)
    view.note_store(14, 4)
    assert view.pending == units


def test_refresh_copies_current_memory_and_never_goes_back():
    view, mem = make(Grain.BYTE)
    mem[10] = b"\x01"
    view.note_store(10, 1)
    mem[10] = b"\x02"  # a second store before this CPU refetched
    view.note_store(10, 1)
    assert view.pending == [(10, 11)]  # one unit, not two
    view.refresh(0, mem)
    assert view.buf[10] == b"\x02" and not view.has_pending()


def test_serialize_makes_everything_visible():
    view, mem = make(Grain.BYTE)
    mem[0:4] = b"abcd"
    view.note_store(0, 4)
    view.refresh(2, mem)
    assert view.read(0, 4) == b"\0\0c\0"  # a torn mix
    assert view.serialize(mem) == ([(0, 1), (1, 2), (3, 4)], [(0, 1), (1, 2), (3, 4)])
    assert view.read(0, 4) == b"abcd" and not view.has_pending()


def test_serialize_says_which_units_changed_the_view():
    """Their translations are the ones to drop (Machine._serialize): a unit stored back to
    what the view holds is visible again but unchanged."""
    view, mem = make(Grain.BYTE)
    view.note_store(0, 2)
    mem[1:2] = b"x"  # byte 0 stored back to what it was
    assert view.serialize(mem) == ([(0, 1), (1, 2)], [(1, 2)])
    assert view.write_own(1, b"x") is False and view.write_own(1, b"y") is True


def test_unknown_grain():
    with pytest.raises(ValueError, match="unknown fetch grain"):
        Grain.parse("word")


def test_a_fetch_may_see_any_content_since_the_views_own_but_never_go_back():
    view, mem = make(Grain.BYTE)
    view.buf[10] = mem[10] = b"\x0f"
    for byte in (b"\xcc", b"\x0f", b"\xe9"):  # three stores before this CPU fetched
        view.note_store(10, 1, mem)  # (memory as it is before the store lands)
        mem[10] = byte
    assert view.pending == [(10, 11)]
    assert view.stale_contents(0, mem) == [b"\x0f", b"\xcc"]  # own, then intermediate; no repeat
    assert view.see(0, b"\xcc")  # a line fetched between the stores
    assert view.read(10, 1) == b"\xcc" and view.has_pending()
    # the 0x0f from before the INT3 is gone; the one stored after it can still be seen
    assert view.stale_contents(0, mem) == [b"\xcc", b"\x0f"]
    assert view.see(0, b"\x0f") and not view.see(0, b"\x0f")  # the second: no change
    assert view.stale_contents(0, mem) == [b"\x0f"]  # the INT3 is in the past now
    view.refresh(0, mem)
    assert view.read(10, 1) == b"\xe9" and not view.has_pending()
    view.note_store(10, 1, mem)  # a store of the same byte: pending, but nothing stale to see
    assert view.stale_contents(0, mem) == []


def test_a_cpus_own_store_is_in_every_stale_content_it_may_still_fetch():
    view, mem = make(Grain.BYTE)
    view.note_store(10, 1, mem)  # another CPU: 0xaa, then 0xbb
    mem[10] = b"\xaa"
    view.note_store(10, 1, mem)
    mem[10] = b"\xbb"
    view.write_own(10, b"\xcc")  # then this CPU stores 0xcc (memory too)
    mem[10] = b"\xcc"
    assert view.stale_contents(0, mem) == []  # nothing older than its own store to see
