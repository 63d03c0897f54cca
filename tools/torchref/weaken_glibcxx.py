#!/usr/bin/env python3
"""Lets TorchSharp's libLibTorchSharp.so load on a libstdc++ older than the one it was linked against.

TorchSharp 0.107.0's libLibTorchSharp.so is built with GCC 13 and so requires GLIBCXX_3.4.32, which Debian 12's
libstdc++ (GCC 12) lacks. The only symbol it takes from that version is std::ios_base_library_init(), a marker
that GCC 13's <iostream> references to pull in the library's stream initialisation; no relocation uses it (check:
readelf -r shows none). Marking that version requirement WEAK (VER_FLG_WEAK in its Vernaux entry) makes ld.so
accept the library; nothing else changes. Usage: weaken_glibcxx.py LIB.so [LIB.so ...]; idempotent.
"""
import struct
import sys

SHT_GNU_VERNEED = 0x6FFFFFFE
VER_FLG_WEAK = 0x2


def system_glibcxx_versions():
    for path in ("/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6"):
        try:
            data = open(path, "rb").read()
        except OSError:
            continue
        import re
        return set(m.decode() for m in re.findall(rb"GLIBCXX_3\.4(?:\.\d+)?(?=\0)", data))
    return None


def patch(path, available):
    data = bytearray(open(path, "rb").read())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit(f"{path}: not a little-endian ELF64 file")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    changed = []
    for sh_name, sh_type, _, _, sh_offset, _, sh_link, sh_info, _, _ in sections:
        if sh_type != SHT_GNU_VERNEED:
            continue
        strtab = sections[sh_link][4]
        vn = sh_offset
        for _ in range(sh_info):
            _, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, vn)
            aux = vn + vn_aux
            for _ in range(vn_cnt):
                _, flags, _, name_off, next_off = struct.unpack_from("<IHHII", data, aux)
                end = data.index(b"\0", strtab + name_off)
                name = data[strtab + name_off:end].decode()
                if name.startswith("GLIBCXX_") and available is not None and name not in available and not flags & VER_FLG_WEAK:
                    struct.pack_into("<H", data, aux + 4, flags | VER_FLG_WEAK)
                    changed.append(name)
                aux += next_off
                if next_off == 0:
                    break
            if vn_next == 0:
                break
            vn += vn_next
    if changed:
        tmp = path + ".tmp"
        open(tmp, "wb").write(data)
        import os
        os.chmod(tmp, os.stat(path).st_mode)
        os.replace(tmp, path)
        print(f"{path}: marked weak: {', '.join(changed)}")


if __name__ == "__main__":
    have = system_glibcxx_versions()
    for p in sys.argv[1:]:
        patch(p, have)
