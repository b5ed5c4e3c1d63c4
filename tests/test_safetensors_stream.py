"""The streaming safetensors writer and the per-tensor memory maps, against the safetensors library."""

import pytest
import torch
from safetensors import safe_open

from babelmerge.safetensors_stream import (
    PlannedTensor,
    SafetensorsError,
    StreamingWriter,
    map_tensor,
    read_header,
    read_tensor,
)


def write(path, tensors: dict[str, torch.Tensor]) -> None:
    writer = StreamingWriter(path, [PlannedTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()])
    for n, t in tensors.items():
        writer.write(n, t)
    writer.close()


def test_round_trip_with_a_misaligned_tensor(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "flags": torch.tensor([1, 0, 1], dtype=torch.uint8),  # 3 bytes: the next tensor starts misaligned
        "w": torch.randn(5, 3, generator=g),
        "h": torch.randn(7, generator=g).bfloat16(),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "model.safetensors"
    write(path, tensors)
    infos = read_header(path)
    assert infos["w"].start % 4 != 0  # really misaligned for float32
    with safe_open(str(path), "pt") as f:
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t)
            for read in (map_tensor, read_tensor):
                got = read(infos[name])
                assert got.dtype == t.dtype and torch.equal(got, t), (name, read.__name__)


def test_a_file_truncated_after_its_header_was_read(tmp_path):
    path = tmp_path / "model.safetensors"
    write(path, {"a": torch.ones(1000), "b": torch.ones(1000)})
    infos = read_header(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(SafetensorsError, match="unexpected end of file"):
        map_tensor(infos["b"])
    assert torch.equal(map_tensor(infos["a"]), torch.ones(1000))
