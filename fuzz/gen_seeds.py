#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: valid records and segments in the format of
wal/FORMAT.md, and damaged variants of them. Run from fuzz/: python3 gen_seeds.py"""
import os, struct

POLY = 0xC96C5795D7870F42  # CRC-64/XZ, reflected
TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ POLY if c & 1 else c >> 1
    TABLE.append(c)

def crc64(b):
    c = 0xFFFFFFFFFFFFFFFF
    for x in b:
        c = TABLE[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFFFFFFFFF

assert crc64(b"123456789") == 0x995DC9BBDF1939FA

def record(lsn, stream, offset, payload, key=None, ts=1700000000000):
    k = key or b""
    flags = 1 if key is not None else 0
    body = struct.pack("<QQQQHH", lsn, stream, offset, ts, flags, len(k)) + k + payload
    framed = struct.pack("<I", len(body)) + body
    return struct.pack("<Q", crc64(framed)) + framed

def header(shard, first_lsn, flags=0):
    h = b"PMQWAL\r\n" + struct.pack("<HHIQ", 1, flags, shard, first_lsn)
    return h + struct.pack("<Q", crc64(h))

def write(d, name, data):
    with open(os.path.join("corpus", d, name), "wb") as f:
        f.write(data)

r1 = record(5, 1, 0, b"hello")
r2 = record(6, 1, 1, b"world", key=b"a/b")
r3 = record(7, 2, 0, b"")
write("record_decoder", "valid_plain", r1)
write("record_decoder", "valid_keyed", r2)
write("record_decoder", "valid_empty", r3)
write("record_decoder", "truncated", r1[:-2])
write("record_decoder", "bad_crc", r1[:8] + bytes([r1[8] ^ 1]) + r1[9:])
write("record_decoder", "huge_len", r1[:8] + struct.pack("<I", 0xFFFFFFF0) + r1[12:])
write("record_decoder", "two_records", r1 + r2)

seg = header(0, 5) + r1 + r2 + r3
write("segment_reader", "valid_segment", seg)
write("segment_reader", "torn_tail", seg[:-7])
mid = bytearray(seg); mid[32 + len(r1) + 20] ^= 0x55
write("segment_reader", "damaged_middle", bytes(mid))
write("segment_reader", "bad_header", b"PMQWAL\r\n" + b"\x00" * 24 + r1)
write("segment_reader", "zero_tail", seg + b"\x00" * 64)
write("segment_reader", "empty_segment", header(3, 100))

# Offset-index blocks (wal/src/block_codec.rs): varint count, then per position a kind byte
# (0 same segment: gap, len; 1 anywhere: segment, at, len; 2 removed: segment, len).
def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)

os.makedirs(os.path.join("corpus", "index_block"), exist_ok=True)
typical = varint(4) + bytes([1]) + varint(1000) + varint(32) + varint(176)
for gap in (0, 352, 176):
    typical += bytes([0]) + varint(gap) + varint(176)
write("index_block", "valid_typical", typical)
mixed = varint(3) + bytes([1]) + varint(5) + varint(100) + varint(50) + bytes([2]) + varint(5) + varint(0) \
    + bytes([1]) + varint(9) + varint(32) + varint(70)
write("index_block", "valid_mixed", mixed)
write("index_block", "valid_empty", varint(0))
write("index_block", "truncated", typical[:-1])
write("index_block", "delta_first", varint(1) + bytes([0, 1, 1]))
write("index_block", "huge_count", bytes([0xFF, 0xFF, 0xFF, 0x0F]))

