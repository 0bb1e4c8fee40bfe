"""Typed media errors. Each carries a short ``reason`` code that lands in rejects.parquet."""

from __future__ import annotations


class MediaError(Exception):
    """Bad input media. The row loop turns it into a reject; it never stops the job."""

    reason = "bad_media"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class UnreadableInput(MediaError):
    reason = "unreadable"


class UndecodableAudio(MediaError):
    reason = "undecodable"


class TruncatedAudio(MediaError):
    reason = "truncated"


class CorruptAudio(MediaError):
    """The header parsed but decoding failed part-way (a cut or damaged stream)."""

    reason = "corrupt"


class EmptyAudio(MediaError):
    reason = "empty"


class NonFiniteAudio(MediaError):
    reason = "non_finite"


class TooShort(MediaError):
    reason = "too_short"


class SilentAudio(MediaError):
    reason = "silent"


class DurationMismatch(MediaError):
    reason = "duration_mismatch"


class BadSampleRate(MediaError):
    """A sample rate no real recording has (a damaged or hostile header)."""

    reason = "bad_sample_rate"


class HeaderMismatch(MediaError):
    """The container's header and the file's size disagree in a way that would hide audio."""

    reason = "header_mismatch"


class BadChannels(MediaError):
    """A channel count no real recording has."""

    reason = "bad_channels"
