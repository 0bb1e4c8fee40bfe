"""Filters on labels: a segment is kept or dropped with a reason, and the reason is counted (the rejects
table gets a row for every dropped segment). A filter only judges a segment that has the label it reads:
a sound segment has no DNSMOS and no language, and passes those filters.

    FilterParams(min_dnsmos=3.0).verdict(labels, "speech") → ("below_min_dnsmos", "dnsmos_ovrl 2.41 < 3.0")
"""

from __future__ import annotations

import dataclasses

from schemas.labels import Labels


@dataclasses.dataclass(frozen=True)
class FilterParams:
    """Config section ``filters``; every filter is off by default."""

    min_dnsmos: float = 0.0                     # drop speech whose DNSMOS overall MOS is lower
    languages: list[str] = dataclasses.field(default_factory=list)   # keep only these transcript languages
    max_transcript_disagreement: float = 1.0    # drop a manifest transcript that ASR disagrees with more (WER)
    min_snr_db: float = -1000.0

    def active(self) -> bool:
        return self != FilterParams()

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.min_dnsmos <= 5:
            out.append(f"filters.min_dnsmos: a MOS in [0, 5], got {self.min_dnsmos}")
        if not 0 <= self.max_transcript_disagreement <= 1:
            out.append(f"filters.max_transcript_disagreement: a word error rate in [0, 1], got {self.max_transcript_disagreement}")
        return out

    def verdict(self, labels: Labels, kind: str) -> tuple[str, str] | None:
        """(reason, detail) when the segment is dropped, else None."""
        q, t = labels.quality, labels.transcript
        if self.min_dnsmos and q is not None and q.dnsmos_ovrl is not None and q.dnsmos_ovrl < self.min_dnsmos:
            return "below_min_dnsmos", f"dnsmos_ovrl {q.dnsmos_ovrl} < filters.min_dnsmos {self.min_dnsmos}"
        if self.languages and t is not None and t.language and t.language not in self.languages:
            return "language_not_allowed", f"language {t.language} not in filters.languages {self.languages}"
        if (t is not None and t.disagreement is not None and t.disagreement > self.max_transcript_disagreement):
            return ("transcript_disagreement", f"ASR disagrees with the transcript: WER {t.disagreement} > "
                    f"filters.max_transcript_disagreement {self.max_transcript_disagreement}")
        if q is not None and q.snr_db is not None and q.snr_db < self.min_snr_db:
            return "below_min_snr", f"snr_db {q.snr_db} < filters.min_snr_db {self.min_snr_db}"
        return None
