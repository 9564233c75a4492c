"""Pure-Python BLAKE3 (hash mode, default 32-byte output), written from the
BLAKE3 specification. It is the fallback of scripts/verify_export.py for
machines without the PyPI package `blake3` (Debian has no python3-blake3).

It exposes the subset of the `blake3` package's interface that the verifier
uses:

    blake3(data=b"").update(data) -> self
    blake3(...).digest(length=32) -> bytes
    blake3(...).hexdigest(length=32) -> str
    blake3(...).copy()

Clarity over speed: it hashes roughly 1 MB/s, ample for audit bundles of
small messages. No keyed hashing, no key derivation.
"""

OUT_LEN = 32
BLOCK_LEN = 64
CHUNK_LEN = 1024

CHUNK_START = 1 << 0
CHUNK_END = 1 << 1
PARENT = 1 << 2
ROOT = 1 << 3

IV = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)

MSG_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)

MASK = 0xFFFFFFFF


def _schedules():
    """The message word order of each of the 7 rounds (the permutation
    applied 0..6 times), so the compression loop needs no copying."""
    order = list(range(16))
    rounds = []
    for _ in range(7):
        rounds.append(tuple(order))
        order = [order[i] for i in MSG_PERMUTATION]
    return tuple(rounds)


SCHEDULES = _schedules()

# The G function's (a, b, c, d) state indices: 4 columns then 4 diagonals.
G_INDICES = (
    (0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
    (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14),
)


def compress(cv, block_words, counter, block_len, flags):
    """The compression function: returns all 16 output words (the first 8
    are the new chaining value; all 16 feed root output for XOF)."""
    s = [
        cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],
        IV[0], IV[1], IV[2], IV[3],
        counter & MASK, (counter >> 32) & MASK, block_len, flags,
    ]
    m = block_words
    for order in SCHEDULES:
        for g, (a, b, c, d) in enumerate(G_INDICES):
            mx = m[order[2 * g]]
            my = m[order[2 * g + 1]]
            # G mixing function: rotations 16, 12, 8, 7.
            va, vb, vc, vd = s[a], s[b], s[c], s[d]
            va = (va + vb + mx) & MASK
            vd ^= va
            vd = ((vd >> 16) | (vd << 16)) & MASK
            vc = (vc + vd) & MASK
            vb ^= vc
            vb = ((vb >> 12) | (vb << 20)) & MASK
            va = (va + vb + my) & MASK
            vd ^= va
            vd = ((vd >> 8) | (vd << 24)) & MASK
            vc = (vc + vd) & MASK
            vb ^= vc
            vb = ((vb >> 7) | (vb << 25)) & MASK
            s[a], s[b], s[c], s[d] = va, vb, vc, vd
    for i in range(8):
        s[i] ^= s[i + 8]
        s[i + 8] ^= cv[i]
    return s


def words_from_block(block):
    """A block of up to 64 bytes as 16 little-endian words, zero-padded."""
    block = bytes(block).ljust(BLOCK_LEN, b"\0")
    return [int.from_bytes(block[4 * i:4 * i + 4], "little") for i in range(16)]


class _Output:
    """The inputs of a compression not yet run: it becomes either a chaining
    value (non-root) or, with ROOT set, the output bytes."""

    def __init__(self, cv, block_words, counter, block_len, flags):
        self.cv = cv
        self.block_words = block_words
        self.counter = counter
        self.block_len = block_len
        self.flags = flags

    def chaining_value(self):
        return compress(self.cv, self.block_words, self.counter,
                        self.block_len, self.flags)[:8]

    def root_bytes(self, length):
        out = bytearray()
        output_block_counter = 0
        while len(out) < length:
            words = compress(self.cv, self.block_words, output_block_counter,
                             self.block_len, self.flags | ROOT)
            for w in words:
                out += w.to_bytes(4, "little")
            output_block_counter += 1
        return bytes(out[:length])


class _ChunkState:
    """One 1024-byte chunk being compressed, 64-byte block by block."""

    def __init__(self, key_words, chunk_counter, flags):
        self.cv = list(key_words)
        self.chunk_counter = chunk_counter
        self.block = bytearray()
        self.blocks_compressed = 0
        self.flags = flags

    def __len__(self):
        return BLOCK_LEN * self.blocks_compressed + len(self.block)

    def _start_flag(self):
        return CHUNK_START if self.blocks_compressed == 0 else 0

    def update(self, data):
        data = memoryview(data)
        while data:
            # Only compress a full block once more input arrives: the last
            # block of the chunk must wait for the CHUNK_END flag.
            if len(self.block) == BLOCK_LEN:
                self.cv = compress(self.cv, words_from_block(self.block),
                                   self.chunk_counter, BLOCK_LEN,
                                   self.flags | self._start_flag())[:8]
                self.blocks_compressed += 1
                self.block = bytearray()
            take = min(BLOCK_LEN - len(self.block), len(data))
            self.block += data[:take]
            data = data[take:]

    def output(self):
        return _Output(self.cv, words_from_block(self.block), self.chunk_counter,
                       len(self.block), self.flags | self._start_flag() | CHUNK_END)

    def copy(self):
        other = _ChunkState(self.cv, self.chunk_counter, self.flags)
        other.block = bytearray(self.block)
        other.blocks_compressed = self.blocks_compressed
        return other


def _parent_output(left_cv, right_cv, key_words, flags):
    return _Output(list(key_words), list(left_cv) + list(right_cv), 0,
                   BLOCK_LEN, PARENT | flags)


def _parent_cv(left_cv, right_cv, key_words, flags):
    return _parent_output(left_cv, right_cv, key_words, flags).chaining_value()


class blake3:
    """Incremental BLAKE3 hasher (hash mode), like `blake3.blake3`."""

    name = "blake3"
    digest_size = OUT_LEN
    block_size = BLOCK_LEN

    def __init__(self, data=b""):
        self._key_words = IV
        self._flags = 0
        self._chunk = _ChunkState(IV, 0, 0)
        self._cv_stack = []  # chaining values of completed subtrees
        if data:
            self.update(data)

    def _add_chunk_cv(self, new_cv, total_chunks):
        # The number of trailing zero bits of total_chunks is the number of
        # completed subtrees on the stack that now merge with this one.
        while total_chunks & 1 == 0:
            new_cv = _parent_cv(self._cv_stack.pop(), new_cv,
                                self._key_words, self._flags)
            total_chunks >>= 1
        self._cv_stack.append(new_cv)

    def update(self, data):
        if isinstance(data, str):
            raise TypeError("Unicode-objects must be encoded before hashing")
        data = memoryview(data).cast("B")
        while data:
            # A full chunk is finalized (as a non-root) only when more input
            # arrives, since the last chunk may turn out to be the root.
            if len(self._chunk) == CHUNK_LEN:
                chunk_cv = self._chunk.output().chaining_value()
                total_chunks = self._chunk.chunk_counter + 1
                self._add_chunk_cv(chunk_cv, total_chunks)
                self._chunk = _ChunkState(self._key_words, total_chunks, self._flags)
            take = min(CHUNK_LEN - len(self._chunk), len(data))
            self._chunk.update(data[:take])
            data = data[take:]
        return self

    def digest(self, length=OUT_LEN):
        # Merge the stack right to left onto the current chunk; the final
        # node (a chunk or a parent) is compressed with ROOT.
        output = self._chunk.output()
        for cv in reversed(self._cv_stack):
            output = _parent_output(cv, output.chaining_value(),
                                    self._key_words, self._flags)
        return output.root_bytes(length)

    def hexdigest(self, length=OUT_LEN):
        return self.digest(length).hex()

    def copy(self):
        other = blake3.__new__(blake3)
        other._key_words = self._key_words
        other._flags = self._flags
        other._chunk = self._chunk.copy()
        other._cv_stack = [list(cv) for cv in self._cv_stack]
        return other
