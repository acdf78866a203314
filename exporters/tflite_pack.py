"""A TFLite model object (the flatbuffers object API's ModelT) back to bytes, every buffer's data
16-byte aligned as the schema asks: `table Buffer { data:[ubyte] (force_align: 16); ... }`.

The generated `BufferT.Pack` aligns buffer data only to the 4 bytes of its length prefix (and
tensorflow.lite.tools.flatbuffer_utils.convert_object_to_bytearray packs with it). slimpipe writes
every file it re-packs (sparse layouts, stripped names, embedded metadata) through `pack_model`,
so weights sit where an mmap-ing runtime may read them in place.

>>> model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
>>> data = pack_model(model)
"""
from __future__ import annotations

import numpy as np

ALIGNMENT = 16


def pack_model(model) -> bytes:
    """The bytes of a ModelT (TensorFlow's or LiteRT's generated schema), buffers 16-aligned.
    Replaces `model.buffers` by aligned equivalents."""
    import flatbuffers

    model.buffers = [AlignedBuffer.of(b) for b in model.buffers or []]
    size = sum(len(b.data) for b in model.buffers if b.data is not None)
    builder = flatbuffers.Builder(size + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def buffer_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """(buffer index, offset of its first data byte in the file, data length) for every buffer
    that holds data."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    out = []
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            out.append((i, buffer._tab.Vector(buffer._tab.Offset(4)), buffer.DataLength()))
    return out


class AlignedBuffer:
    """A Buffer table whose data is packed 16-byte aligned (the object API's `Pack` protocol)."""

    def __init__(self, data):
        self.data = data

    @classmethod
    def of(cls, src) -> "AlignedBuffer":
        if isinstance(src, (bytes, bytearray)):
            return cls(np.frombuffer(bytes(src), dtype=np.uint8))
        if getattr(src, "offset", 0) or getattr(src, "size", 0):
            raise ValueError("buffers stored by offset (models over 2 GB) cannot be re-packed inline")
        data = src.data
        if data is not None and not isinstance(data, np.ndarray):
            data = np.asarray(data, dtype=np.uint8)
        return cls(data)

    def Pack(self, builder):  # noqa: N802  (the flatbuffers object-API name)
        from ai_edge_litert import schema_py_generated as fb

        data = None
        if self.data is not None:
            raw = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), ALIGNMENT)
            builder.head = builder.head - len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            data = builder.EndVector(len(raw))
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)
