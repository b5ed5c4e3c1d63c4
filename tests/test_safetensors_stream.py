"""The streaming safetensors writer and the per-tensor memory maps, against the safetensors library."""

import errno
import fcntl
import os

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


def write(path, tensors: dict[str, torch.Tensor], **kwargs) -> StreamingWriter:
    writer = StreamingWriter(
        path, [PlannedTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], **kwargs
    )
    for n, t in tensors.items():
        writer.write(n, t)
    writer.close()
    return writer


def assert_reads_back(path, tensors: dict[str, torch.Tensor]) -> None:
    infos = read_header(path)
    assert path.stat().st_size == max(i.end for i in infos.values())  # no padding left behind
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == sorted(tensors)
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t), name


def direct_io_works(folder) -> bool:
    """Whether this file system takes O_DIRECT writes (ext4 and xfs do, tmpfs only since Linux 6.6)."""
    probe = StreamingWriter(folder / "probe.safetensors", [], direct=True)
    probe.close()
    (folder / "probe.safetensors").unlink()
    return probe.direct


def varied_tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "odd": torch.tensor([1, 0, 1], dtype=torch.uint8),  # everything after it starts unaligned
        **{f"t{i}": torch.randn(100 + 537 * i, generator=g) for i in range(8)},  # 400 B – 15 KB
        "h": torch.randn(3001, generator=g).bfloat16(),
    }


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


def test_direct_writes_go_through_the_aligned_buffer_and_leave_an_exact_file(tmp_path, monkeypatch):
    """With a 2-block buffer the tensors cross many buffer boundaries; the file is exact and reads back equal."""
    if not direct_io_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    monkeypatch.setattr(safetensors_stream, "STAGE_BYTES", 2 * safetensors_stream.ALIGN)
    offsets = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        offsets.append((offset, len(data)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    tensors = varied_tensors(1)
    path = tmp_path / "model.safetensors"
    assert write(path, tensors).direct
    align = safetensors_stream.ALIGN
    assert all(off % align == 0 and n % align == 0 for off, n in offsets)  # what O_DIRECT requires
    assert [off for off, _ in offsets] == [i * 2 * align for i in range(len(offsets))]  # in order, no gaps
    assert len(offsets) == -(-path.stat().st_size // (2 * align))
    assert_reads_back(path, tensors)


def test_a_refused_direct_write_is_finished_through_the_page_cache(tmp_path, monkeypatch):
    """A file system may accept the O_DIRECT flag and refuse the write (EINVAL): the writer drops the flag and
    writes the same bytes again, buffered."""
    if not direct_io_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    monkeypatch.setattr(safetensors_stream, "STAGE_BYTES", 2 * safetensors_stream.ALIGN)
    real_pwrite, refused = os.pwrite, []

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and offset >= 4 * safetensors_stream.ALIGN:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    requests = []  # once buffered, write-back is asked for as on any buffered file
    monkeypatch.setattr(safetensors_stream, "WRITEBACK_EVERY", 1000)
    monkeypatch.setattr(
        safetensors_stream, "_sync_file_range", lambda fd, off, n, flags: requests.append((off, n))
    )
    tensors = varied_tensors(2)
    path = tmp_path / "model.safetensors"
    writer = write(path, tensors)
    assert refused == [4 * safetensors_stream.ALIGN] and not writer.direct
    assert requests and requests[0][0] == 0
    assert all(off + n == next_off for (off, n), (next_off, _) in zip(requests, requests[1:]))
    assert_reads_back(path, tensors)


def test_direct_io_can_be_turned_off(tmp_path, monkeypatch):
    """``BABELMERGE_DIRECT_IO=0``: every write goes through the page cache (no O_DIRECT on the file at any write)."""
    monkeypatch.setenv("BABELMERGE_DIRECT_IO", "0")
    real_pwrite, direct_flags = os.pwrite, []

    def pwrite(fd, data, offset):
        direct_flags.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    tensors = varied_tensors(3)
    path = tmp_path / "model.safetensors"
    writer = write(path, tensors)
    assert not writer.direct and direct_flags and not any(direct_flags)
    assert_reads_back(path, tensors)


def test_write_back_is_started_over_the_written_bytes_in_order(tmp_path, monkeypatch):
    """Through the page cache, every WRITEBACK_EVERY bytes the writer asks the kernel to start writing back
    exactly the bytes written since the last request (file offsets, header included); the file reads back equal."""
    requests = []
    monkeypatch.setattr(safetensors_stream, "WRITEBACK_EVERY", 1000)
    monkeypatch.setattr(
        safetensors_stream, "_sync_file_range", lambda fd, off, n, flags: requests.append((off, n, flags))
    )
    g = torch.Generator().manual_seed(1)
    tensors = {f"t{i}": torch.randn(100 + 37 * i, generator=g) for i in range(8)}  # 400–1436 bytes each
    path = tmp_path / "model.safetensors"
    write(path, tensors, direct=False)
    infos = read_header(path)
    assert requests[0][0] == 0 and all(flags == 2 for *_, flags in requests)
    for (off, n, _), (next_off, _, _) in zip(requests, requests[1:]):
        assert n >= 1000 and off + n == next_off  # contiguous, each at least the threshold
    ends = {i.end for i in infos.values()}
    assert all(off + n in ends for off, n, _ in requests)  # each request ends at a tensor boundary
    assert path.stat().st_size - (requests[-1][0] + requests[-1][1]) < 1000  # the rest: left to the fsync
    assert_reads_back(path, tensors)


@pytest.mark.parametrize("direct", [False, True])
def test_short_writes_are_completed(tmp_path, monkeypatch, direct):
    """pwrite may write fewer bytes than asked; the writer writes the rest (with O_DIRECT the 7-byte writes are
    themselves refused, so the file is finished buffered)."""
    real_pwrite, calls = os.pwrite, []

    def short(fd, data, offset):
        calls.append(offset)
        return real_pwrite(fd, memoryview(data)[:7], offset)  # never more than 7 bytes at a time

    monkeypatch.setattr(os, "pwrite", short)
    tensors = {"a": torch.arange(50, dtype=torch.float32).view(5, 10), "b": torch.ones(3).bfloat16()}
    path = tmp_path / "model.safetensors"
    write(path, tensors, direct=direct)
    assert len(calls) >= path.stat().st_size // 7
    assert_reads_back(path, tensors)
