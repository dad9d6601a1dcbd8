"""Where in the kernel: "lguest_entry+0xa" for an eip, from the symbol table of the ELF
vmlinux the Guest booted (a bzImage has none: then there are no names).

Before the Guest's first NEW_PGTABLE it runs at physical addresses (startup_32 at
0x1000000, linked at 0xc1000000), so an eip inside a PT_LOAD segment's physical range
is looked up at its virtual address.  Only --trace reads the file, once, at exit.
"""

import bisect
import struct

_SYM = struct.Struct("<IIIBBH")          # Elf32_Sym: name, value, size, info, other, shndx
STT_NOTYPE, STT_FUNC = 0, 2


class Symbols:
    """Symbols(path).where(eip) -> "name+0xoff" or None.  Never raises: a file that is
    not a 32-bit ELF with a .symtab simply has no names."""

    def __init__(self, path):
        self._addrs, self._names, self._segs = [], [], []
        try:
            self._load(path)
        except Exception:
            self._addrs, self._names, self._segs = [], [], []

    def _load(self, path):
        from elftools.elf.elffile import ELFFile
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.elfclass != 32:
                return
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                return
            strtab = elf.get_section(symtab["sh_link"]).data()
            syms = []
            for name, value, _size, info, _other, shndx in _SYM.iter_unpack(symtab.data()):
                if name and shndx and value and (info & 0xF) in (STT_NOTYPE, STT_FUNC):
                    end = strtab.index(b"\0", name)
                    syms.append((value, strtab[name:end].decode(errors="replace")))
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] != seg["p_paddr"]:
                    self._segs.append((seg["p_paddr"], seg["p_memsz"],
                                       seg["p_vaddr"] - seg["p_paddr"]))
        syms.sort()
        self._addrs = [a for a, _ in syms]
        self._names = [n for _, n in syms]

    def where(self, eip):
        if not self._addrs:
            return None
        for paddr, size, delta in self._segs:
            if paddr <= eip < paddr + size:
                eip += delta
                break
        i = bisect.bisect_right(self._addrs, eip) - 1
        if i < 0 or eip - self._addrs[i] > 0x10000:
            return None
        off = eip - self._addrs[i]
        return "%s+%#x" % (self._names[i], off) if off else self._names[i]
