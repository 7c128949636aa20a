#!/usr/bin/env python3
"""hylo's safetensors reader/writer against the reference implementation (pip `safetensors`, Rust core).

usage: test_safetensors_oracle.py PATH/TO/st_tool

  (a) files hylo writes (st_tool write) load in the reference with the expected names, dtypes, shapes,
      metadata and values; expected values are computed here independently (numpy's float16 cast, a float64
      round-to-nearest-even for bf16), not read back through hylo;
  (b) files the reference writes (numpy save_file for F32/F16/I64/U8, TensorSpec for BF16) and hand-made
      files (out-of-order offsets, unaligned data, no tensors) load in hylo (st_tool dump) with identical
      values; a few malformed files are rejected by both;
  (c) sharded checkpoints: an HF-style index + shards written here load in hylo (st_tool dump-dir), a
      misplaced tensor is rejected, and checkpoints hylo writes (st_tool write-dir) have a consistent index.

Exit 0 on success, 1 on any mismatch, 77 (skip) when numpy or safetensors cannot be imported.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import safetensors
    from safetensors.numpy import load_file, save_file
except ImportError as exc:  # the CTest registration maps 77 to "skipped"
    print(f"SKIP: needs numpy and safetensors ({exc})")
    sys.exit(77)

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print(f"FAIL: {what}")


# ---- the st_tool generator, mirrored (tests/tools/st_tool.cpp) ----------------------------------------------

SPECIALS = [0x00000000, 0x80000000, 0x3F800000, 0xC0200000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x000116C2,
            0x33800000, 0x477FF000, 0x7F7FFFFF, 0x3F808000, 0x3F801000, 0xFFC12345, 0x7F800001, 0x387FE000,
            0x3F818000, 0x3F803000]
M32 = 0xFFFFFFFF


def mix32(x):
    x = (x * 0x9E3779B1) & M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & M32
    x ^= x >> 13
    return x


def source_bits(seed, count):
    out = np.zeros(count, dtype=np.uint32)
    for i in range(count):
        if i < len(SPECIALS):
            out[i] = SPECIALS[(i + seed) % len(SPECIALS)]
            continue
        h = mix32((seed * 0x10001 + i) & M32)
        if h % 4 == 0:
            out[i] = mix32(h)
        else:
            out[i] = np.float32(((h >> 8) % 20001 - 10000) / 256.0).view(np.uint32)
    return out


GEN_TENSORS = [  # name, dtype, shape, seed -- in st_tool's (spec) order
    ("z.first.f16", "F16", [5], 1),
    ("a.f32.matrix", "F32", [3, 5], 2),
    ("b.bf16.vector", "BF16", [517], 3),
    ("c.f16.cube", "F16", [8, 9, 10], 4),
    ("d.f32.scalar", "F32", [], 5),
    ("e.f16.empty", "F16", [0], 6),
    ("f.bf16.empty2d", "BF16", [4, 0], 7),
    ("g.f32.rank8", "F32", [1, 2, 1, 2, 1, 2, 1, 3], 8),
    ("h.bf16.odd", "BF16", [3, 1], 9),
    ("i.f32.long", "F32", [1000], 10),
]
GEN_METADATA = {"format": "pt", "producer": "st_tool", "unicode": "h\u00e9llo \u2713", "empty": ""}


# ---- independent conversions --------------------------------------------------------------------------------

def f32_to_bf16_reference(bits):
    """Round-to-nearest-even to bf16 by comparing distances in float64 (not the bit trick hylo uses)."""
    out = np.zeros(bits.shape, dtype=np.uint16)
    for k, b in enumerate(bits.tolist()):
        sign, mag = b & 0x80000000, b & 0x7FFFFFFF
        if mag > 0x7F800000:  # NaN: any NaN is acceptable, flagged by the comparison below
            out[k] = 0x7FC0 | (sign >> 16)
            continue
        x = float(np.uint32(mag).view(np.float32))
        lo = mag >> 16
        lo_v = float(np.uint32(lo << 16).view(np.float32))
        hi_v = 2.0 ** 128 if lo + 1 == 0x7F80 else float(np.uint32((lo + 1) << 16).view(np.float32))
        if lo == 0x7F80:  # infinity stays infinity
            r = lo
        elif x - lo_v < hi_v - x:
            r = lo
        elif x - lo_v > hi_v - x:
            r = lo + 1
        else:
            r = lo + (lo & 1)
        out[k] = r | (sign >> 16)
    return out


def stored_reference(dtype, src_bits):
    """The bits a correct writer stores for float32 source values `src_bits`."""
    if dtype == "F32":
        return src_bits
    if dtype == "F16":
        with np.errstate(all="ignore"):
            return src_bits.view(np.float32).astype(np.float16).view(np.uint16)
    if dtype == "BF16":
        return f32_to_bf16_reference(src_bits)
    raise ValueError(dtype)


def is_nan_bits(dtype, bits):
    bits = np.asarray(bits).astype(np.uint64)
    if dtype == "F32":
        return (bits & 0x7FFFFFFF) > 0x7F800000
    if dtype == "F16":
        return (bits & 0x7FFF) > 0x7C00
    return (bits & 0x7FFF) > 0x7F80  # BF16


def same_bits(dtype, got, want, what):
    """Bitwise equality, except that NaN only has to match NaN with the same sign (payloads may differ)."""
    got = np.asarray(got).astype(np.uint64).ravel()
    want = np.asarray(want).astype(np.uint64).ravel()
    if got.shape != want.shape:
        check(False, f"{what}: {got.size} values, expected {want.size}")
        return
    sign = 0x80000000 if dtype == "F32" else 0x8000
    gn, wn = is_nan_bits(dtype, got), is_nan_bits(dtype, want)
    ok = np.where(wn, gn & ((got & sign) == (want & sign)), got == want)
    bad = np.flatnonzero(~ok)
    check(bad.size == 0, f"{what}: {bad.size} mismatches, first at {bad[:1].tolist()}: "
                         f"got {[hex(int(got[i])) for i in bad[:3]]} want {[hex(int(want[i])) for i in bad[:3]]}")


def widen_to_f32_bits(dtype, raw):
    """Float32 bits of stored F32/BF16/F16 bytes, via numpy (independent of hylo's conversion)."""
    if dtype == "F32":
        return np.frombuffer(raw, dtype=np.uint32)
    if dtype == "BF16":
        return np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
    if dtype == "F16":
        return np.frombuffer(raw, dtype=np.float16).astype(np.float32).view(np.uint32)
    raise ValueError(dtype)


# ---- st_tool ---------------------------------------------------------------------------------------------

def run_tool(tool, *args, expect_ok=True):
    p = subprocess.run([tool, *args], capture_output=True, text=True)
    if expect_ok and p.returncode != 0:
        check(False, f"st_tool {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return None
    return p


def dump(tool, *args):
    p = run_tool(tool, *args)
    return json.loads(p.stdout) if p else None


def compare_dump_to_raw(dumped, name, dtype, shape, raw, what):
    """hylo's dump of one tensor vs. the reference reader's raw bytes for it."""
    check(dumped["dtype"] == dtype, f"{what} {name}: dtype {dumped['dtype']} != {dtype}")
    check(list(dumped["shape"]) == list(shape), f"{what} {name}: shape {dumped['shape']} != {list(shape)}")
    if dtype in ("F32", "BF16", "F16"):
        same_bits("F32", np.array(dumped["bits"], dtype=np.uint64), widen_to_f32_bits(dtype, raw), f"{what} {name}")
    else:
        check(dumped["raw_hex"] == bytes(raw).hex(), f"{what} {name}: raw bytes differ")


def header_of(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n], object_pairs_hook=lambda pairs: pairs), data


# ---- (a) hylo writes, the reference reads --------------------------------------------------------------------

def test_hylo_written_file(tool, tmp):
    path = os.path.join(tmp, "hylo.safetensors")
    if run_tool(tool, "write", path) is None:
        return
    n, header_pairs, data = header_of(path)
    check(n % 8 == 0, f"header length {n} is not a multiple of 8")
    check(data[8:8 + n].rstrip(b" ").endswith(b"}"), "header padding is not spaces")
    keys = [k for k, _ in header_pairs]
    check(keys == ["__metadata__"] + [t[0] for t in GEN_TENSORS], f"header order {keys}")

    loaded = {name: info for name, info in safetensors.deserialize(data)}  # the reference validates the file
    check(sorted(loaded) == sorted(t[0] for t in GEN_TENSORS), f"tensor names {sorted(loaded)}")
    with safetensors.safe_open(path, framework="np") as f:
        check(f.metadata() == GEN_METADATA, f"metadata {f.metadata()}")
        for name, dtype, shape, seed in GEN_TENSORS:
            info = loaded[name]
            check(info["dtype"] == dtype, f"(a) {name}: dtype {info['dtype']}")
            check(list(info["shape"]) == shape, f"(a) {name}: shape {info['shape']}")
            count = int(np.prod(shape, dtype=np.int64))
            want = stored_reference(dtype, source_bits(seed, count))
            view = np.uint32 if dtype == "F32" else np.uint16
            same_bits(dtype, np.frombuffer(bytes(info["data"]), dtype=view), want, f"(a) {name}")
            if dtype != "BF16":  # numpy has no bf16; the other dtypes also go through the numpy loader
                arr = f.get_tensor(name)
                check(list(arr.shape) == shape, f"(a) numpy {name}: shape {arr.shape}")
                same_bits(dtype, arr.view(view), want, f"(a) numpy {name}")

    # And hylo reads its own file back to the same values the reference saw.
    d = dump(tool, "dump", path)
    if d:
        got = {t["name"]: t for t in d["files"][0]["tensors"]}
        check(d["files"][0]["metadata"] == GEN_METADATA, "(a) hylo metadata")
        for name, dtype, shape, _ in GEN_TENSORS:
            compare_dump_to_raw(got[name], name, dtype, shape, bytes(loaded[name]["data"]), "(a) dump")
    print(f"(a) hylo-written file: {len(GEN_TENSORS)} tensors checked")


# ---- (b) the reference writes, hylo reads --------------------------------------------------------------------

def special_f32(rng, shape):
    count = int(np.prod(shape, dtype=np.int64))
    bits = rng.integers(0, 2 ** 32, size=count, dtype=np.uint64).astype(np.uint32)
    bits[: min(count, len(SPECIALS))] = SPECIALS[: min(count, len(SPECIALS))]
    return bits.view(np.float32).reshape(shape)


def reference_tensors(rng):
    """name -> (dtype, shape, raw little-endian bytes)."""
    out = {}
    for name, shape in [("f32.matrix", (4, 7)), ("f32.scalar", ()), ("f32.empty", (0, 3)), ("f32.rank8", (1, 2) * 4)]:
        out[name] = ("F32", shape, special_f32(rng, shape).tobytes())
    for name, shape in [("f16.vec", (300,)), ("f16.odd", (3, 3)), ("f16.empty", (0,))]:
        h = rng.integers(0, 2 ** 16, size=int(np.prod(shape, dtype=np.int64)), dtype=np.uint64).astype(np.uint16)
        h[:6] = [0x0001, 0x03FF, 0x7BFF, 0x7C00, 0x7E00, 0x8000][: h.size]
        out[name] = ("F16", shape, h.tobytes())
    for name, shape in [("bf16.vec", (257,)), ("bf16.scalar", ())]:
        b = rng.integers(0, 2 ** 16, size=int(np.prod(shape, dtype=np.int64)), dtype=np.uint64).astype(np.uint16)
        out[name] = ("BF16", shape, b.tobytes())
    out["i64.step"] = ("I64", (1,), np.array([1234567890123], dtype=np.int64).tobytes())
    out["u8.mask"] = ("U8", (5,), np.arange(5, dtype=np.uint8).tobytes())
    return out


NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8}


def save_reference(tensors, path, metadata=None):
    """Writes with the reference writer: numpy arrays for numpy dtypes, TensorSpec (raw pointer) for BF16."""
    if all(d in NUMPY_DTYPES for d, _, _ in tensors.values()):
        arrays = {n: np.frombuffer(raw, dtype=NUMPY_DTYPES[d]).reshape(s) for n, (d, s, raw) in tensors.items()}
        save_file(arrays, path, metadata=metadata)
        return
    keep, specs = [], {}
    for n, (d, s, raw) in tensors.items():
        buf = np.frombuffer(raw, dtype=np.uint8).copy()
        keep.append(buf)
        specs[n] = safetensors.TensorSpec(dtype={"F32": "float32", "F16": "float16", "BF16": "bfloat16",
                                                 "I64": "int64", "U8": "uint8"}[d],
                                          shape=list(s), data_ptr=buf.ctypes.data, data_len=buf.nbytes)
    safetensors.serialize_file(specs, path, metadata=metadata)


def compare_dump(d, tensors, what):
    got = {}
    for f in d["files"]:
        for t in f["tensors"]:
            got[t["name"]] = t
    check(sorted(got) == sorted(tensors), f"{what}: names {sorted(got)} != {sorted(tensors)}")
    for name, (dtype, shape, raw) in tensors.items():
        if name in got:
            compare_dump_to_raw(got[name], name, dtype, shape, raw, what)


def handmade(entries, data, pad=b"", n_override=None):
    """[u64 N][JSON with entries in the given order][pad][data]; entries: (name, dtype, shape, begin, end)."""
    header = "{" + ",".join(
        f'"{n}":{{"dtype":"{d}","shape":{json.dumps(list(s))},"data_offsets":[{b},{e}]}}' for n, d, s, b, e in entries
    ) + "}"
    h = header.encode() + pad
    return struct.pack("<Q", len(h) if n_override is None else n_override) + h + data


def test_reference_written_files(tool, tmp):
    rng = np.random.default_rng(20240601)
    tensors = reference_tensors(rng)

    numpy_only = {n: v for n, v in tensors.items() if v[0] in NUMPY_DTYPES}
    p1 = os.path.join(tmp, "ref_numpy.safetensors")
    save_reference(numpy_only, p1, metadata={"format": "np", "k": "v"})
    check(set(load_file(p1)) == set(numpy_only), "(b) reference cannot read its own file")
    d = dump(tool, "dump", p1)
    if d:
        compare_dump(d, numpy_only, "(b) numpy save_file")
        check(d["files"][0]["metadata"] == {"format": "np", "k": "v"}, "(b) metadata")

    p2 = os.path.join(tmp, "ref_all.safetensors")
    save_reference(tensors, p2)
    d = dump(tool, "dump", p2)
    if d:
        compare_dump(d, tensors, "(b) serialize_file incl. BF16")
        check(d["files"][0]["metadata"] == {}, "(b) no metadata expected")

    # Hand-made valid files: out-of-order-but-contiguous, unaligned data (odd header, no padding), empty.
    data = np.arange(12, dtype=np.float32).tobytes() + np.array([0x3C00], dtype=np.uint16).tobytes()
    valid = {
        "out_of_order": handmade([("second", "F32", [4], 16, 32), ("first", "F32", [4], 0, 16),
                                  ("third", "F32", [4], 32, 48), ("h", "F16", [1], 48, 50)], data),
        "unaligned": handmade([("x", "F32", [12], 0, 48), ("hh", "F16", [1], 48, 50)], data, pad=b" " * 3),
        "no_tensors": handmade([], b""),
        "zero_size_mid": handmade([("a", "F32", [6], 0, 24), ("z", "BF16", [0, 2], 24, 24), ("b", "F32", [6], 24, 48),
                                   ("h", "F16", [], 48, 50)], data),
    }
    for name, blob in valid.items():
        path = os.path.join(tmp, f"hand_{name}.safetensors")
        with open(path, "wb") as f:
            f.write(blob)
        ref = {n: (i["dtype"], tuple(i["shape"]), bytes(i["data"])) for n, i in safetensors.deserialize(blob)}
        d = dump(tool, "dump", path)
        if d:
            compare_dump(d, ref, f"(b) handmade {name}")

    # Malformed files both implementations must reject.
    w = [("w", "F32", [2], 0, 8)]
    bad = {
        "truncated_data": handmade(w, b"\0" * 7),
        "trailing_byte": handmade(w, b"\0" * 9),
        "hole": handmade([("a", "F32", [1], 0, 4), ("b", "F32", [1], 8, 12)], b"\0" * 12),
        "overlap": handmade([("a", "F32", [2], 0, 8), ("b", "F32", [2], 4, 12)], b"\0" * 12),
        "wrong_size": handmade([("a", "F32", [2], 0, 9)], b"\0" * 9),
        "header_past_eof": handmade([], b"", n_override=3),
        "unknown_dtype": handmade([("a", "F128", [1], 0, 16)], b"\0" * 16),
    }
    for name, blob in bad.items():
        path = os.path.join(tmp, f"bad_{name}.safetensors")
        with open(path, "wb") as f:
            f.write(blob)
        try:
            safetensors.deserialize(blob)
            ref_rejects = False
        except Exception:
            ref_rejects = True
        p = run_tool(tool, "dump", path, expect_ok=False)
        check(ref_rejects, f"(b) reference accepted malformed {name}")
        check(p.returncode == 1 and "safetensors error" in p.stderr and path in p.stderr,
              f"(b) hylo did not reject {name} cleanly: rc={p.returncode} {p.stderr.strip()}")
    print(f"(b) reference-written files: {len(tensors)} tensors, {len(valid)} hand-made valid, {len(bad)} malformed")


# ---- (c) sharded checkpoints ---------------------------------------------------------------------------------

def test_sharded(tool, tmp):
    rng = np.random.default_rng(7)
    tensors = reference_tensors(rng)
    names = sorted(tensors)
    groups = [names[0::3], names[1::3], names[2::3]]
    ck = os.path.join(tmp, "ckpt_ref")
    os.makedirs(ck)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_reference({n: tensors[n] for n in group}, os.path.join(ck, shard), metadata={"format": "pt"})
        for n in group:
            weight_map[n] = shard
            total += len(tensors[n][2])
    with open(os.path.join(ck, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    d = dump(tool, "dump-dir", ck)
    if d:
        compare_dump(d, tensors, "(c) HF-style sharded")
        check(d["names"] == names, "(c) checkpoint names")
        check(len(d["files"]) == 3, f"(c) {len(d['files'])} files")

    # The index names the wrong shard for one tensor: hylo must refuse and name both shards.
    moved = names[0]
    bad_map = dict(weight_map, **{moved: weight_map[names[1]]})
    with open(os.path.join(ck, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": bad_map}, f)
    p = run_tool(tool, "dump-dir", ck, expect_ok=False)
    check(p.returncode == 1 and weight_map[moved] in p.stderr and bad_map[moved] in p.stderr,
          f"(c) misplaced tensor not reported with both shards: {p.stderr.strip()}")

    # hylo writes a sharded checkpoint; the reference reads every shard and the index is consistent.
    out = os.path.join(tmp, "ckpt_hylo")
    if run_tool(tool, "write-dir", out, "3000") is None:
        return
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    check(len(shards) > 1 and all(s.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards),
          f"(c) shard names {shards}")
    found, size = {}, 0
    for s in shards:
        with open(os.path.join(out, s), "rb") as f:
            for name, info in safetensors.deserialize(f.read()):
                check(name not in found, f"(c) {name} in two shards")
                found[name] = s
                size += len(info["data"])
    check(found == index["weight_map"], "(c) weight_map does not match shard contents")
    check(index["metadata"]["total_size"] == size, f"(c) total_size {index['metadata']['total_size']} != {size}")
    check(sorted(found) == sorted(t[0] for t in GEN_TENSORS), "(c) hylo checkpoint tensor names")
    d = dump(tool, "dump-dir", out)
    check(d is not None and d["names"] == sorted(found), "(c) hylo cannot read its own sharded checkpoint")

    # Everything fits: a single model.safetensors and no index.
    single = os.path.join(tmp, "ckpt_single")
    run_tool(tool, "write-dir", single, str(1 << 30))
    check(sorted(os.listdir(single)) == ["model.safetensors"], f"(c) single-file dir holds {os.listdir(single)}")
    check(len(load_file_any(os.path.join(single, "model.safetensors"))) == len(GEN_TENSORS), "(c) single file")
    print(f"(c) sharded checkpoints: {len(tensors)} tensors in 3 reference shards, {len(shards)} hylo shards")


def load_file_any(path):
    with open(path, "rb") as f:
        return dict(safetensors.deserialize(f.read()))


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    tool = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="hylo_st_oracle_") as tmp:
        test_hylo_written_file(tool, tmp)
        test_reference_written_files(tool, tmp)
        test_sharded(tool, tmp)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print(f"all checks passed (safetensors {safetensors.__version__}, numpy {np.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
