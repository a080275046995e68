"""`/usr/lib/sealbox/reseed`: a 359-byte static x86-64 program that credits entropy to the guest kernel and reseeds it.

A guest restored from a snapshot starts with its siblings' random state: the kernel's CRNG keys are in the snapshot's
memory, and Linux 6.1 only reseeds them on a timer (up to 60 s) — so two restored guests could generate the same SSH
host keys. The restore agent (files/agent.sh) therefore runs this program with its port as standard input: it reads
the host's fresh entropy (up to 512 bytes; the host sends exactly 512, so it never waits for an end of file) and makes
the two ioctls no tool of the image can make from a shell: RNDADDENTROPY (mix the bytes into the input pool and credit
them, 8 bits a byte) and RNDRESEEDCRNG (reseed the CRNG from that pool now).

Written here byte by byte, so the image stays reproducible without a compiler: the machine code below is what GNU as
makes of ASM (tests/unit/runtime/test_rt_reseed.py reassembles it and compares), and `program()` wraps it in a minimal
ELF executable (one read+execute segment, a non-executable stack). Exit status: 0 done; 2 fewer than 32 bytes on
stdin; 3 read error; 4 cannot open /dev/urandom; 5 RNDADDENTROPY failed (not root?); 6 RNDRESEEDCRNG failed.
"""

from __future__ import annotations

import struct

ASM = """\
    .intel_syntax noprefix
    .globl _start
_start:
    sub rsp, 528                # struct rand_pool_info { int entropy_count; int buf_size; u8 buf[512]; } at [rsp]
    xor r12d, r12d              # bytes read so far
1:  mov edx, 512
    sub edx, r12d
    jz 2f                       # buffer full
    xor edi, edi                # read(0, buf + n, 512 - n)
    lea rsi, [rsp + r12 + 8]
    xor eax, eax
    syscall
    test rax, rax
    js 3f
    jz 2f                       # end of input
    add r12, rax
    jmp 1b
2:  mov edi, 2
    cmp r12d, 32                # at least 256 bits
    jb 8f
    mov [rsp + 4], r12d         # buf_size
    lea eax, [r12*8]
    mov [rsp], eax              # entropy_count: every byte credited with 8 bits
    lea rdi, [rip + path]       # open("/dev/urandom", O_RDONLY | O_CLOEXEC)
    mov esi, 0x80000
    mov eax, 2
    syscall
    mov edi, 4
    test eax, eax
    js 8f
    mov r13d, eax
    mov edi, r13d               # ioctl(fd, RNDADDENTROPY, &info)
    mov esi, 0x40085203
    mov rdx, rsp
    mov eax, 16
    syscall
    mov edi, 5
    test eax, eax
    jnz 8f
    mov edi, r13d               # ioctl(fd, RNDRESEEDCRNG)
    mov esi, 0x5207
    xor edx, edx
    mov eax, 16
    syscall
    mov edi, 6
    test eax, eax
    jnz 8f
    xor edi, edi
    jmp 8f
3:  mov edi, 3
8:  mov eax, 231                # exit_group(status)
    syscall
path:
    .asciz "/dev/urandom"
"""

CODE = bytes.fromhex(
    "4881ec100200004531e4ba000200004429e2741731ff4a8d74240831c00f054885c0787a74054901c4ebdfbf020000004183fc20726d"
    "4489642404428d04e500000000890424488d3d5d000000be00000800b8020000000f05bf0400000085c078414189c54489efbe035208"
    "404889e2b8100000000f05bf0500000085c075234489efbe0752000031d2b8100000000f05bf0600000085c0750931ffeb05bf030000"
    "00b8e70000000f052f6465762f7572616e646f6d00"
)

BASE = 0x400000  # where the one segment is loaded
EHDR, PHDR = 64, 56
PT_LOAD, PT_GNU_STACK = 1, 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4


def program() -> bytes:
    """The executable: ELF header, two program headers (the code segment, a non-executable stack), the code."""
    offset = EHDR + 2 * PHDR
    size = offset + len(CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1, System V ABI
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + offset, EHDR, 0, 0, EHDR, PHDR, 2, 0, 0, 0)
    load = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, 0, BASE, BASE, size, size, 0x1000)
    stack = struct.pack("<IIQQQQQQ", PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 0, 16)
    return header + load + stack + CODE
