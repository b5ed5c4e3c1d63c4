"""The streaming safetensors writer and the per-tensor memory maps, against the safetensors library."""

import pytest
import torch
from safetensors import safe_open

from babelmerge import safetensors_stream
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


def test_write_back_is_started_over_the_written_bytes_in_order(tmp_path, monkeypatch):
    """Every WRITEBACK_EVERY bytes the writer asks the kernel to start writing back exactly the bytes written
    since the last request (file offsets, header included); the file still reads back equal."""
    requests = []
    monkeypatch.setattr(safetensors_stream, "WRITEBACK_EVERY", 1000)
    monkeypatch.setattr(
        safetensors_stream, "_sync_file_range", lambda fd, off, n, flags: requests.append((off, n, flags))
    )
    g = torch.Generator().manual_seed(1)
    tensors = {f"t{i}": torch.randn(100 + 37 * i, generator=g) for i in range(8)}  # 400–1436 bytes each
    path = tmp_path / "model.safetensors"
    write(path, tensors)
    infos = read_header(path)
    data_start = min(i.start for i in infos.values())
    assert requests[0][0] == data_start and all(flags == 2 for *_, flags in requests)
    for (off, n, _), (next_off, _, _) in zip(requests, requests[1:]):
        assert n >= 1000 and off + n == next_off  # contiguous, each at least the threshold
    ends = {i.end for i in infos.values()}
    assert all(off + n in ends for off, n, _ in requests)  # each request ends at a tensor boundary
    assert path.stat().st_size - (requests[-1][0] + requests[-1][1]) < 1000  # the rest: left to the fsync
    with safe_open(str(path), "pt") as f:
        assert all(torch.equal(f.get_tensor(n), t) for n, t in tensors.items())


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """An unbuffered file may write fewer bytes than asked; the writer writes the rest."""
    import io

    real_write = io.FileIO.write

    class Short(io.FileIO):
        def write(self, b):
            return real_write(self, memoryview(b)[:7])  # never more than 7 bytes at a time

    monkeypatch.setattr(safetensors_stream, "open", lambda p, mode, buffering: Short(p, mode), raising=False)
    tensors = {"a": torch.arange(50, dtype=torch.float32).view(5, 10), "b": torch.ones(3).bfloat16()}
    path = tmp_path / "model.safetensors"
    write(path, tensors)
    with safe_open(str(path), "pt") as f:
        assert all(torch.equal(f.get_tensor(n), t) for n, t in tensors.items())
