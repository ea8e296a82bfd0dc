"""
TFRecord files and tf.train.Example records, read without TensorFlow.

A TFRecord file is a sequence of records, each framed as
    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
(little endian), with masked_crc(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32.
Records here are tf.train.Example protobufs; their schema is declared below and parsed
with the protobuf library.
"""

import functools
import struct
from pathlib import Path
from typing import Dict, Iterator, Union

import numpy as np

_MASK_DELTA = 0xA282EAD8


class CorruptRecord(ValueError):
    def __init__(self, path, index: int, reason: str):
        super().__init__(f"{path}: record {index}: {reason}")


def masked_crc32c(data: bytes) -> int:
    import crc32c

    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(path) -> Iterator[bytes]:
    """The records of a TFRecord file, each checked against both of its CRCs."""
    with open(path, "rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise CorruptRecord(path, index, "truncated length header")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                raise CorruptRecord(path, index, "CRC mismatch in the length header")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise CorruptRecord(path, index, f"truncated: {length} bytes announced")
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise CorruptRecord(path, index, "CRC mismatch in the data")
            yield data
            index += 1


def write_record(f, data: bytes) -> None:
    """Append one framed record to an open binary file."""
    header = struct.pack("<Q", len(data))
    f.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))


@functools.lru_cache(maxsize=None)
def example_class():
    """The tf.train.Example message class, built once from its schema (tensorflow/core/example/*.proto)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="video_diffusion_example.proto", package="tensorflow",
                                            syntax="proto3")

    def message(name, *fields, nested=()):
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
            if packed:
                field.options.packed = True
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, F.TYPE_BYTES, rep, None, False))
    message("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None, True))
    message("Int64List", ("value", 1, F.TYPE_INT64, rep, None, True))
    feature = message("Feature", ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", False),
                      ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", False),
                      ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", False))
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", ("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", False))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    message("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def parse_example(data: bytes) -> Dict[str, Union[bytes, np.ndarray]]:
    """Feature name -> bytes (a single bytes value), float32 array, or int64 array."""
    example = example_class()()
    example.ParseFromString(data)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            values = list(feature.bytes_list.value)
            out[name] = values[0] if len(values) == 1 else values
        elif kind == "float_list":
            out[name] = np.array(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[name] = np.array(feature.int64_list.value, dtype=np.int64)
    return out


def tfrecord_files(root) -> list:
    """``*.tfrecords`` under ``root``, in natural file-name order (traj_256_to_511 before traj_1024_to_1279)."""
    from .video_io import _natural_key

    return sorted(Path(root).rglob("*.tfrecords"), key=lambda p: (str(p.parent), _natural_key(p)))
