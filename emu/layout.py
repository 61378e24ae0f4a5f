"""The kernel-like address space every emulated CPU shares, and its translation.

The machine uses Unicorn's virtual-TLB mode: there are no guest page tables, the harness
translates every virtual page on a TLB miss (see ../shared/reference/unicorn.md, "Variant B").
This is what lets an instruction *fetch* of a text page and a data *read* of the same page go
to different physical pages: fetches read the CPU's own fetch view, data accesses read memory.

Virtual layout (kernel addresses, all canonical, all in the top 2 GiB so that absolute
addresses fit a sign-extended disp32 as in the kernel code model):

    TEXT_BASE   0xffffffff81000000  kernel text: fetch -> per-CPU view (X), read -> memory (R),
                                    write -> #PF (the executable mapping is read-only, as in Linux);
                                    the fast engine fetches a page of the view from its copy in
                                    PHYS_FETCH_POOL (emu/fetch_pages.c): translations outlive
                                    view changes
    DATA_BASE   0xffffffff82000000  shared data: GDT, IDT, per-CPU areas, guest variables (RW, NX)
    STACK_BASE  0xffffffff83000000  per-CPU stacks (RW, NX), each above an unmapped guard page,
                                    so an overflow faults (naming its CPU) instead of silently
                                    overwriting the next CPU's stack
    POKE_BASE   0xffffffff84000000  writable alias of the text pages (RW, NX); text_poke() writes
                                    here, as Linux writes through its poking mapping
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

PAGE = 0x1000

TEXT_BASE = 0xFFFFFFFF81000000
DATA_BASE = 0xFFFFFFFF82000000
STACK_BASE = 0xFFFFFFFF83000000
POKE_BASE = 0xFFFFFFFF84000000

# Physical layout of each Unicorn instance. TEXT_MEM, DATA and STACKS are backed by host
# buffers shared by all instances; VIEW is backed by a buffer private to each CPU.
PHYS_TEXT_MEM = 0x0100_0000
PHYS_VIEW = 0x0200_0000
PHYS_DATA = 0x0300_0000
PHYS_STACKS = 0x0400_0000
# The fast engine's fetch pages (emu/fetch_pages.c): copies of view pages, each CPU its own.
PHYS_FETCH_POOL = 0x0500_0000

# The largest regions these layouts leave room for: text (and its alias and each CPU's view)
# and data each end where the next region begins, virtually and physically.
MAX_TEXT_SIZE = min(DATA_BASE - TEXT_BASE, PHYS_VIEW - PHYS_TEXT_MEM, PHYS_DATA - PHYS_VIEW)
MAX_DATA_SIZE = min(STACK_BASE - DATA_BASE, PHYS_STACKS - PHYS_DATA)
MAX_STACKS_SIZE = min(POKE_BASE - STACK_BASE, PHYS_FETCH_POOL - PHYS_STACKS)

# Fixed places inside the data region.
GDT_OFFSET = 0x0000
IDT_OFFSET = 0x1000
PERCPU_OFFSET = 0x2000
PERCPU_SIZE = 0x100  # one per CPU; GS_BASE points at it, gs:[0] holds the CPU number
GUEST_DATA_OFFSET = 0x8000  # first byte free for guest variables

GDT_ADDR = DATA_BASE + GDT_OFFSET
IDT_ADDR = DATA_BASE + IDT_OFFSET
KERNEL_CS = 0x08
KERNEL_DS = 0x10
# 64-bit code (L=1, P=1, DPL=0, type execute/read) and flat data descriptors.
GDT_ENTRIES = (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)

STACK_GUARD = PAGE  # unmapped, below each CPU's stack

MAX_CPUS = 64  # IPI destinations are a 64-bit mask


class Access(enum.IntEnum):
    """Unicorn's memory access codes as passed to the TLB fill hook."""

    READ = 16
    WRITE = 17
    FETCH = 18


class Region(enum.Enum):
    TEXT = "text"
    POKE = "poke"
    DATA = "data"
    STACK = "stack"


@dataclass(frozen=True)
class Layout:
    """Sizes of the regions for one machine; everything else follows from the constants."""

    ncpus: int
    text_size: int = 0x10000
    data_size: int = 0x20000
    stack_size: int = 0x4000

    def __post_init__(self) -> None:
        if not 1 <= self.ncpus <= MAX_CPUS:
            raise ValueError(f"ncpus must be between 1 and {MAX_CPUS}, got {self.ncpus}")
        for name in ("text_size", "data_size", "stack_size"):
            size = getattr(self, name)
            if size <= 0 or size % PAGE:
                raise ValueError(f"{name} must be a positive multiple of {PAGE:#x}, got {size:#x}")
        if self.text_size > MAX_TEXT_SIZE:
            raise ValueError(f"text_size must be at most {MAX_TEXT_SIZE:#x}, got "
                             f"{self.text_size:#x}")
        if self.data_size > MAX_DATA_SIZE:
            raise ValueError(f"data_size must be at most {MAX_DATA_SIZE:#x}, got "
                             f"{self.data_size:#x}")
        if self.stacks_size > MAX_STACKS_SIZE:
            raise ValueError(f"the stacks ({self.ncpus} of {self.stack_size:#x} bytes) exceed "
                             f"{MAX_STACKS_SIZE:#x} bytes")
        if self.data_size <= GUEST_DATA_OFFSET:
            raise ValueError(f"data_size must exceed {GUEST_DATA_OFFSET:#x}")
        if PERCPU_OFFSET + self.ncpus * PERCPU_SIZE > GUEST_DATA_OFFSET:
            raise ValueError("too many CPUs for the per-CPU area")

    @property
    def stack_slot(self) -> int:
        """One CPU's part of the stack region: its guard page, then its stack."""
        return STACK_GUARD + self.stack_size

    @property
    def stacks_size(self) -> int:
        return self.ncpus * self.stack_slot

    def stack_top(self, cpu: int) -> int:
        return STACK_BASE + (cpu + 1) * self.stack_slot

    def stack_range(self, cpu: int) -> tuple[int, int]:
        """[lowest, top) of a CPU's mapped stack, virtual."""
        top = self.stack_top(cpu)
        return top - self.stack_size, top

    def guard_owner(self, va: int) -> int | None:
        """The CPU whose guard page (the unmapped page below its stack) holds `va`, if any:
        an access there is that CPU's stack overflowing."""
        off = va - STACK_BASE
        if not 0 <= off < self.stacks_size or off % self.stack_slot >= STACK_GUARD:
            return None
        return off // self.stack_slot

    def percpu(self, cpu: int) -> int:
        return DATA_BASE + PERCPU_OFFSET + cpu * PERCPU_SIZE

    def region_of(self, va: int) -> tuple[Region, int] | None:
        """(region, offset) of a virtual address, or None when it is unmapped."""
        if TEXT_BASE <= va < TEXT_BASE + self.text_size:
            return Region.TEXT, va - TEXT_BASE
        if DATA_BASE <= va < DATA_BASE + self.data_size:
            return Region.DATA, va - DATA_BASE
        if STACK_BASE <= va < STACK_BASE + self.stacks_size:
            if (va - STACK_BASE) % self.stack_slot < STACK_GUARD:
                return None  # a guard page
            return Region.STACK, va - STACK_BASE
        if POKE_BASE <= va < POKE_BASE + self.text_size:
            return Region.POKE, va - POKE_BASE
        return None

    def translate(self, va: int, access: Access) -> int | None:
        """Physical address for an access, or None when the access faults (#PF).

        Fetches from text go to the CPU's view; every other text access goes to memory. Data,
        stacks and the poking alias are no-execute; the executable text mapping is read-only.
        """
        hit = self.region_of(va)
        if hit is None:
            return None
        region, off = hit
        if region is Region.TEXT:
            if access is Access.FETCH:
                return PHYS_VIEW + off
            if access is Access.READ:
                return PHYS_TEXT_MEM + off
            return None
        if access is Access.FETCH:
            return None
        if region is Region.POKE:
            return PHYS_TEXT_MEM + off
        if region is Region.DATA:
            return PHYS_DATA + off
        return PHYS_STACKS + off

    def present(self, va: int) -> bool:
        return self.region_of(va) is not None
