"""The SFTP download's own read-ahead (``sftp._copy_pipelined``): bytes in file order whatever the server does.

A fake client answers read requests the way paramiko's ``SFTPClient`` hands them over: through
``_read_response(waitfor)``, which gives other requests' answers to their ``_async_response`` callback first.
"""
from __future__ import annotations

import io
import os

import paramiko
import pytest
from paramiko.sftp import CMD_DATA, CMD_STATUS, SFTP_EOF

from csp_observatory import sftp

pytestmark = pytest.mark.unit


class _FakeClient:
    """Answers reads from ``data``, at most ``longest`` bytes each, swapping each pair of answers if ``swap``."""

    _convert_status = paramiko.SFTPClient._convert_status

    def __init__(self, data: bytes, longest: int, swap: bool) -> None:
        self.data, self.longest, self.swap = data, longest, swap
        self.next_num, self.queue, self.callers = 0, [], {}
        self.most_in_flight = 0

    def _async_request(self, fileobj, t, handle, offset, length):
        num = self.next_num
        self.next_num += 1
        self.callers[num] = fileobj
        self.queue.append((num, int(offset), int(length)))
        self.most_in_flight = max(self.most_in_flight, len(self.queue))
        return num

    def _answer(self, offset: int, length: int) -> tuple[int, paramiko.Message]:
        m = paramiko.Message()
        if offset >= len(self.data):
            m.add_int(SFTP_EOF)
            m.add_string("End of file")
            m.add_string("")
            return CMD_STATUS, paramiko.Message(m.asbytes())
        m.add_string(self.data[offset:offset + min(length, self.longest)])
        return CMD_DATA, paramiko.Message(m.asbytes())

    def _read_response(self, waitfor=None):
        while True:
            if self.swap and len(self.queue) >= 2:
                self.queue[0], self.queue[1] = self.queue[1], self.queue[0]
            num, offset, length = self.queue.pop(0)
            t, msg = self._answer(offset, length)
            caller = self.callers.pop(num)
            if num == waitfor:
                if t == CMD_STATUS:
                    self._convert_status(msg)
                return t, msg
            caller._async_response(t, msg, num)


class _File:
    handle = b"h"


@pytest.mark.parametrize("longest, swap", [(1 << 30, False), (1 << 30, True), (50_000, False), (50_000, True)])
def test_the_copy_is_the_file_whatever_the_order_and_length_of_the_answers(longest, swap):
    data = os.urandom(3 * sftp._READ_SIZE * sftp._READS_IN_FLIGHT + 12_345)
    client, out = _FakeClient(data, longest, swap), io.BytesIO()
    assert sftp._copy_pipelined(client, _File(), len(data), out) == len(data)     # type: ignore[arg-type]
    assert out.getvalue() == data
    # requests were kept in flight, never more than the bound
    assert 1 < client.most_in_flight <= sftp._READS_IN_FLIGHT


def test_a_file_shorter_than_its_listed_size_is_copied_to_its_end():
    data = os.urandom(sftp._READ_SIZE * 5 + 7)
    client, out = _FakeClient(data, 1 << 30, True), io.BytesIO()
    assert sftp._copy_pipelined(client, _File(), len(data) * 3, out) == len(data)  # type: ignore[arg-type]
    assert out.getvalue() == data


def test_an_empty_file_copies_nothing():
    client, out = _FakeClient(b"", 1 << 30, False), io.BytesIO()
    assert sftp._copy_pipelined(client, _File(), 0, out) == 0                      # type: ignore[arg-type]
    assert out.getvalue() == b"" and client.next_num == 0
